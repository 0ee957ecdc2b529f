"""Review findings on the DP query pipeline, each pinned by a regression test.

* A deletion recorded between a query's plan and its reservation made the reservation stale; the
  retry reloaded the view but kept the plan made on the old policy, so a top-k over a catalogue
  taken from the data file still listed an item only the forgotten person had touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from privrec.governance.charging import LedgerCharging

from .test_query_refusals import TOP, small_world


def test_a_deletion_racing_the_reservation_refuses_item_queries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = small_world(tmp_path)  # catalogue taken from the data file
    reserve = LedgerCharging.reserve
    race = {"armed": False}

    def racing(self: LedgerCharging, *args: Any, **kwargs: Any) -> Any:
        if race["armed"]:  # the deletion lands after the plan, before the reservation
            race["armed"] = False
            w.owner.forget("r", "victim", reason="erasure")
        return reserve(self, *args, **kwargs)

    monkeypatch.setattr(LedgerCharging, "reserve", racing)
    with w.client() as c:
        assert c.post(TOP, headers=w.headers, json={"epsilon": 0.1, "k": 1}).status_code == 200
        charged = len(w.owner.history("r", limit=None))
        race["armed"] = True
        r = c.post(TOP, headers=w.headers, json={"epsilon": 0.1, "k": 6})
        assert not race["armed"]
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "policy_violation"
        assert "clinic-x" not in r.text
    assert len(w.owner.history("r", limit=None)) == charged  # the refusal charged nothing
