"""The service keeps nothing of a recommendation request: not in logs, not on disk, not in the ledger.

The world's item ids are random tokens, so finding one in a log line would be a leak, never a
coincidence. Logging is captured at DEBUG for every logger (the app's, uvicorn's, the
libraries'), together with everything written to stdout/stderr.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from privrec.governance import Ledger
from privrec.serve.app import create_app
from privrec.serve.demo import DemoWorld
from privrec.serve.models import ServedModel

from .conftest import ITEM_TOKENS, auth, settings_for


def _snapshot(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def test_recommend_requests_leave_no_trace(
    world: DemoWorld,
    model_id: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history = ITEM_TOKENS[10:20]
    caplog.set_level(logging.DEBUG)
    for name in ("privrec", "privrec.serve", "privrec.serve.access", "uvicorn", "fastapi"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    dora = Ledger.connect(world.url, world.keys["dora"])
    rows_before = dora.verify_audit_log().rows
    files_before = _snapshot(world.root)
    h = auth(world, "ann")
    with TestClient(create_app(settings_for(world)), raise_server_exceptions=False) as c:
        ok = c.post(
            "/v1/recommend", headers=h, json={"model": model_id, "history": history, "k": 5}
        )
        assert ok.status_code == 200
        recommended = [i["item"] for i in ok.json()["items"]]
        # error paths carry the history too: malformed, unknown model, oversized, internal error
        assert (
            c.post(
                "/v1/recommend", headers=h, json={"model": model_id, "history": history, "k": "x"}
            ).status_code
            == 422
        )
        assert (
            c.post(
                "/v1/recommend", headers=h, json={"model": "nope", "history": history}
            ).status_code
            == 404
        )
        assert (
            c.post(
                "/v1/recommend", headers=h, json={"model": model_id, "history": history * 400}
            ).status_code
            == 413
        )

        def boom(self: ServedModel, hist: list[object], k: int) -> object:
            raise RuntimeError(f"cannot score {hist}")  # a message that quotes the request

        monkeypatch.setattr(ServedModel, "recommend", boom)
        bad = c.post("/v1/recommend", headers=h, json={"model": model_id, "history": history})
        assert bad.status_code == 500 and bad.json()["error"]["message"] == "internal error"
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "POST /v1/recommend 200" in caplog.text  # the access log ran (template, status)
    assert "internal error: RuntimeError" in caplog.text
    for token in history + recommended:
        assert token not in logged, f"{token} leaked into the logs"
    assert "ann" not in caplog.text  # not even who asked
    assert dora.verify_audit_log().rows == rows_before  # no ledger row for a recommendation
    assert _snapshot(world.root) == files_before  # no file written or grown


def test_encrypted_scoring_route(client: TestClient, world: DemoWorld, model_id: str) -> None:
    """The HE route: the server scores an encrypted user vector it cannot read (CKKS)."""
    pytest.importorskip("tenseal")
    from privrec.models import load_model
    from privrec.secure.he import PrivateScoringClient

    model = load_model(world.models_dir / f"{model_id}.npz")  # the released model, client side
    pos = {v: i for i, v in enumerate(model.item_ids_.tolist())}
    idx = np.array(sorted(pos[t] for t in ITEM_TOKENS[:8]))
    row = sp.csr_matrix(
        (np.ones(idx.size, np.float32), idx, [0, idx.size]), shape=(1, model.n_items_)
    )
    he = PrivateScoringClient(packing="replicated")
    u = he.fold_in(model, row)
    request = he.encrypt_query(u).to_bytes()
    r = client.post(
        f"/v1/models/{model_id}/he-score",
        headers={**auth(world, "ann"), "Content-Type": "application/octet-stream"},
        content=request,
    )
    assert r.status_code == 200, r.text[:300]
    scores = he.decrypt_scores(r.content)
    expected = np.asarray(model.item_factors_, dtype=np.float64) @ u
    assert np.allclose(scores, expected, atol=1e-3)
    # the server keeps no client context: a request without one is refused
    again = he.encrypt_query(u).to_bytes()  # the context is not attached a second time
    r2 = client.post(f"/v1/models/{model_id}/he-score", headers=auth(world, "ann"), content=again)
    assert r2.status_code == 422 and "context" in r2.json()["error"]["message"]
