"""``privrec serve --workers 2``: two processes, one ledger — recommendations agree, budgets hold.

Each worker loads the models and datasets itself and keeps its own key cache and rate-limit
buckets; the ledger database is shared, and its transactions (SQLite ``BEGIN IMMEDIATE``) are
what keep a budget exact when analysts race through different processes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from privrec.governance import Ledger
from privrec.serve.app import SETTINGS_ENV, ServeSettings, app_from_environment
from privrec.serve.datasets import load_dataset_specs
from privrec.serve.demo import build_demo

from .conftest import ITEM_TOKENS, settings_for, tokenised
from .test_races import PER_QUERY, _fits

CAP = 1.0
N_ANALYSTS = 16


def test_settings_travel_to_workers_as_json(world: object, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(world, rate_limit=7.0, burst=9, key_ttl=2.5)  # type: ignore[arg-type]
    again, level = ServeSettings.from_json(settings.to_json("debug"))
    assert again == settings and level == "debug"
    monkeypatch.setenv(SETTINGS_ENV, settings.to_json("warning"))
    app = app_from_environment()
    assert app.state.ctx.settings == settings
    monkeypatch.delenv(SETTINGS_ENV)
    with pytest.raises(Exception, match=SETTINGS_ENV):
        app_from_environment()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:  # pragma: no cover - not Linux
        return []
    return [int(x) for x in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (its new parent reaps it)


@pytest.mark.slow
def test_two_workers_share_one_ledger(tmp_path: Path) -> None:
    world = build_demo(
        tmp_path, data=tokenised(n_users=200, n_items=60), epsilons=(1.0,), queries=False, factors=8
    )
    assert load_dataset_specs(world.datasets_file)
    owner = Ledger.connect(world.url, world.keys["olga"])
    owner.set_budget("ratings", epsilon=CAP, delta=1e-6, scope="purpose", value="race")
    keys = [owner.create_key(f"racer{i}", "analyst") for i in range(N_ANALYSTS)]
    expected = _fits(CAP, PER_QUERY, 1e-6)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "privrec", "serve", "--db", world.url,
             "--models", str(world.models_dir), "--datasets", str(world.datasets_file),
             "--port", str(port), "--rate-limit", "0", "--workers", "2", "--log-level", "info"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"privrec serve --workers 2 did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers

        # recommendations: one answer, whichever process takes the connection
        body = {"model": "dpals-eps1", "history": ITEM_TOKENS[:5], "k": 5}
        answers = set()
        for _ in range(12):  # a new connection each time: the kernel spreads them
            with httpx.Client(base_url=url, timeout=30) as c:
                r = c.post("/v1/recommend", headers={"X-API-Key": keys[0]}, json=body)
                assert r.status_code == 200, r.text
                answers.add(r.content)
        assert len(answers) == 1

        # racing analysts, each on their own connection (spread over both processes)
        results: list[int] = []
        lock = threading.Lock()
        start = threading.Barrier(N_ANALYSTS)

        def analyst(key: str) -> None:
            mine = []
            with httpx.Client(
                base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"}
            ) as c:
                start.wait()
                for _ in range(expected):
                    r = c.post(
                        "/v1/datasets/ratings/queries/top-k",
                        json={"epsilon": PER_QUERY, "k": 3, "purpose": "race"},
                    )
                    mine.append(r.status_code)
                    if r.status_code != 200:
                        break
            with lock:
                results.extend(mine)

        threads = [threading.Thread(target=analyst, args=(k,)) for k in keys]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pid in workers:  # the workers go with the supervisor
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, 9)
                pytest.fail(f"worker {pid} outlived privrec serve")
    assert set(results) <= {200, 403}, sorted(set(results))
    assert results.count(200) == expected  # filled exactly, across two processes
    (race,) = [
        b for b in owner.status("ratings") if b.scope == "purpose" and b.scope_value == "race"
    ]
    assert race.composed_epsilon <= CAP and race.committed == expected and race.reserved == 0
    text = log.read_text()
    assert "2 worker processes" in text.replace("\n", " ")
    assert not any(t in text for t in ITEM_TOKENS[:5])
