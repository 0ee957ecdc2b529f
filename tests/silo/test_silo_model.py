"""Cross-silo results as privrec model files, the mandatory server configuration, and failures
that are named at once instead of after a timeout."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from privrec.cli.main import app
from privrec.errors import ConfigError, PeerUnavailable, PrivrecError, ProtocolAbort
from privrec.models import DPALS, DPEASE, load_model
from privrec.secure.channel import Listener
from privrec.secure.silo import (
    AggregationServer,
    Silo,
    SiloConfig,
    SiloEASEConfig,
    make_driver,
    run_local,
    setup_keys,
)
from privrec.secure.silo_model import read_catalogue, to_model
from privrec.secure.silo_roles import _accept

N_ITEMS = 40
runner = CliRunner()


def _silos(n_items: int = N_ITEMS, seed: int = 0) -> list[sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    x = sp.csr_matrix((rng.random((150, n_items)) < 0.2).astype(np.float64))
    return [x[:50], x[50:100], x[100:]]


@pytest.mark.parametrize("kind", ["dpals", "dpease"])
def test_result_saved_as_a_normal_private_model_without_users(tmp_path: Path, kind: str) -> None:
    silos = _silos()
    config: SiloConfig | SiloEASEConfig = (
        SiloConfig(epsilon=4.0, delta=1e-6, n_items=N_ITEMS, factors=4, iterations=2)
        if kind == "dpals"
        else SiloEASEConfig(epsilon=4.0, delta=1e-6, n_items=N_ITEMS)
    )
    result = run_local(silos, config, timeout=30)
    catalogue = np.arange(1000, 1000 + N_ITEMS)
    model = to_model(result, config, catalogue)
    assert model.privacy_guarantee.catalogue == "given"  # the agreed public list, not learnt
    assert isinstance(model, DPALS if kind == "dpals" else DPEASE)
    path = model.save(tmp_path / "silo-model.npz")
    with np.load(path) as z:  # nothing per user, not even a user count
        for name in ("user_ids", "ui_data", "ui_indices", "ui_indptr"):
            assert name not in z.files or z[name].size <= 1
        assert "ui_shape" not in z.files or int(z["ui_shape"][0]) == 0
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.n_users_ == 0
    g = loaded.privacy_guarantee  # type: ignore[attr-defined]
    assert g.epsilon == pytest.approx(result.guarantee.epsilon)
    assert g.recompute_epsilon() <= g.epsilon * (1 + 1e-9)
    assert loaded.item_ids_.tolist() == catalogue.tolist()
    # a user scored from their own history, as inside a silo
    hist = sp.csr_matrix(silos[0][:5])
    ref = result.scores(hist, config) if kind == "dpals" else result.scores(hist)  # type: ignore[call-arg,arg-type]
    items, _ = loaded.recommend_history(hist, k=5, exclude_seen=False)
    expected = np.argsort(-ref, axis=1, kind="stable")[:, :5]
    assert (np.sort(items, axis=1) == np.sort(expected, axis=1)).mean() > 0.99
    res = runner.invoke(app, ["privacy", "explain", str(path)])
    assert res.exit_code == 0, res.output
    assert "rdp" in res.output.lower()


def test_catalogue_must_match_the_configuration(tmp_path: Path) -> None:
    f = tmp_path / "items.txt"
    f.write_text("a\nb\n")
    assert read_catalogue(f).tolist() == ["a", "b"]
    config = SiloConfig(epsilon=4.0, delta=1e-6, n_items=3, factors=2, iterations=1)
    result = run_local([sp.csr_matrix(np.eye(3)), sp.csr_matrix(np.eye(3))], config, timeout=30)
    with pytest.raises(ConfigError, match="catalogue lists 2 items"):
        to_model(result, config, read_catalogue(f))
    f.write_text("a\na\n")
    with pytest.raises(Exception, match="twice"):
        read_catalogue(f)


def test_aggregation_servers_need_the_configuration(tmp_path: Path) -> None:
    roster, ids = setup_keys(tmp_path, 1)
    with pytest.raises(ConfigError, match="--config"):
        AggregationServer(ids["server0"], roster, config=None)
    res = runner.invoke(
        app,
        [
            "silo",
            "serve",
            "--roster",
            str(tmp_path / "roster.json"),
            "--key",
            str(tmp_path / "server0.key"),
        ],
    )
    assert res.exit_code == 2 and "--config" in res.output


def test_a_silo_with_items_outside_the_catalogue_is_named_at_once(tmp_path: Path) -> None:
    """The issue's case: the silo's data does not fit the configured catalogue size."""
    silos = _silos(n_items=N_ITEMS + 5)  # silo data over a larger catalogue
    config = SiloConfig(epsilon=4.0, delta=1e-6, n_items=N_ITEMS, factors=4, iterations=1)
    roster, ids = setup_keys(tmp_path, 3)
    roles: list[AggregationServer | Silo] = [
        AggregationServer(ids[s], roster, timeout=60, config=config) for s in ("server0", "server1")
    ]
    roles += [
        Silo(ids[f"silo{i + 1}"], roster, x, timeout=60, config=config) for i, x in enumerate(silos)
    ]

    def quietly(role: AggregationServer | Silo) -> None:
        with contextlib.suppress(PrivrecError):  # the session ends when the driver aborts
            role.run()

    threads = [threading.Thread(target=quietly, args=(r,), daemon=True) for r in roles]
    for th in threads:
        th.start()
    driver = make_driver(ids["driver"], roster, config, timeout=60)
    t0 = time.monotonic()
    with pytest.raises(
        ProtocolAbort, match="silo 'silo1' cannot take part: its data names items outside"
    ) as info:
        driver.train()
    assert time.monotonic() - t0 < 20  # named at once, not after the 60 s timeout
    assert info.value.phase == "aggregate"
    for th in threads:
        th.join(30)


def test_a_silo_with_fewer_items_fits_the_announced_catalogue(tmp_path: Path) -> None:
    # a silo whose users never touched the last items: its matrix is narrower
    silos = _silos()
    narrow = [sp.csr_matrix(x[:, : N_ITEMS - 3]) for x in silos]
    config = SiloConfig(epsilon=4.0, delta=1e-6, n_items=N_ITEMS, factors=4, iterations=1)
    result = run_local(narrow, config, timeout=30)
    assert result.item_factors.shape == (N_ITEMS, 4)


def test_missing_parties_are_named(tmp_path: Path) -> None:
    roster, ids = setup_keys(tmp_path, 2)
    listener = Listener(ids["driver"], roster, timeout=1)
    try:
        with pytest.raises(PeerUnavailable, match=r"'silo2' did not connect within 0.5 s"):
            _accept(listener, 0.5, ["silo2"])
    finally:
        listener.close()


def test_split_and_config_commands(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = tmp_path / "ratings.csv"
    rows = [f"{u},{1000 + i},4.0,1" for u in range(60) for i in rng.choice(25, 6, replace=False)]
    data.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    out = tmp_path / "silos"
    res = runner.invoke(app, ["silo", "split", str(data), "--silos", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    catalogue = read_catalogue(out / "items.txt")
    assert len(catalogue) == 25 and set(catalogue.tolist()) <= set(range(1000, 1025))
    lines = [
        line.split() for i in (1, 2, 3) for line in (out / f"silo{i}.txt").read_text().splitlines()
    ]
    assert len(lines) == 60 and all(int(v) < 25 for line in lines for v in line[1:])
    res = runner.invoke(
        app,
        [
            "silo",
            "config",
            "--items",
            str(out / "items.txt"),
            "--epsilon",
            "5",
            "--out",
            str(tmp_path / "run.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert SiloConfig.model_validate_json((tmp_path / "run.json").read_text()).n_items == 25
    for bad, match in [
        (["--epsilon", "5"], "--items FILE or its size"),
        (["--n-items", "5", "--epsilon", "-1"], "epsilon"),
        (["--n-items", "5", "--epsilon", "1", "--model", "x"], "dpals or dpease"),
    ]:
        res = runner.invoke(app, ["silo", "config", *bad, "--out", str(tmp_path / "r.json")])
        assert res.exit_code == 1 and match in res.output, res.output
