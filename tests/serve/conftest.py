"""Service fixtures: one small demo world per session (SQLite), an app and clients per test.

The world is built by :func:`privrec.serve.demo.build_demo` (the same code ``make serve`` runs) on
small synthetic data whose item ids are long random tokens — so a test can search the logs for
them and know that a hit is a leak, not a coincidence.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from privrec.data import synthetic
from privrec.data.interactions import Interactions
from privrec.governance import Ledger
from privrec.serve.app import ServeSettings, create_app
from privrec.serve.datasets import load_dataset_specs
from privrec.serve.demo import DemoWorld, build_demo

ITEM_TOKENS = [f"itm{secrets.token_hex(8)}" for _ in range(120)]
USER_TOKENS = [f"usr{secrets.token_hex(8)}" for _ in range(400)]


def tokenised(n_users: int = 300, n_items: int = 120, seed: int = 3) -> Interactions:
    base = synthetic(n_users=n_users, n_items=n_items, seed=seed)
    m = base.matrix.tocoo()
    return Interactions.from_arrays(
        [USER_TOKENS[u] for u in np.asarray(base.user_ids)[m.row].tolist()],
        [ITEM_TOKENS[i] for i in m.col.tolist()],
    )


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> DemoWorld:
    root = tmp_path_factory.mktemp("serve-world")
    return build_demo(root, data=tokenised(), epsilons=(1.0, 4.0), factors=8)


def settings_for(world: DemoWorld, **kw: object) -> ServeSettings:
    base: dict[str, object] = {
        "db_url": world.url,
        "models_dir": world.models_dir,
        "datasets": load_dataset_specs(world.datasets_file),
    }
    base.update(kw)
    return ServeSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def client(world: DemoWorld) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(world))) as c:
        yield c


@dataclass
class Analyst:
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def fresh_analyst(world: DemoWorld) -> Analyst:
    """A new analyst with their own budget of ε = 1 on 'ratings' (tests do not share spending)."""
    owner = Ledger.connect(world.url, world.keys["olga"])
    name = f"a{secrets.token_hex(4)}"
    key = owner.create_key(name, "analyst")
    owner.set_budget("ratings", epsilon=1.0, delta=1e-6, scope="analyst", value=name)
    return Analyst(name, key)


def auth(world: DemoWorld, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.keys[who]}"}


@pytest.fixture
def model_id(world: DemoWorld) -> str:
    return Path(world.models[0]).name.removesuffix(".npz")


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a thread; stopped on exit."""

    def __init__(self, app: object) -> None:
        import socket
        import threading

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                access_log=False,
                ws="none",
            )  # type: ignore[arg-type]
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty ledger URL on SQLite, then on the session's throw-away PostgreSQL cluster."""
    import os
    import uuid

    from privrec.governance.db import dispose_engines

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'privrec.db'}"
        dispose_engines()
        return
    cluster = request.getfixturevalue("pg_cluster")
    if isinstance(cluster, str):
        if os.environ.get("PRIVREC_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PRIVREC_REQUIRE_POSTGRES=1 but {cluster}")
        pytest.skip(cluster)
    name = "s_" + uuid.uuid4().hex[:12]
    cluster.sql(f"CREATE DATABASE {name}")
    yield cluster.url(name)
    dispose_engines()
    cluster.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


#: Debian's chromium (``.ci/run`` installs it); Playwright never downloads a browser here
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser() -> Iterator[object]:
    """A headless Chromium context (Playwright driving Debian's chromium by its path)."""
    import os
    import tempfile

    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium (.ci/run installs it)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    with playwright_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 1000},
        )  # fmt: skip
        try:
            yield ctx
        finally:
            ctx.close()
