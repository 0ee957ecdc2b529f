"""``privrec mpc topk`` and ``privrec mpc party``: secure top-k from the command line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

if importlib.util.find_spec("mpyc") is None:
    pytest.skip("secure top-k needs the [mpc] extra (mpyc)", allow_module_level=True)

from privrec.cli.main import app
from privrec.secure.mpc import free_ports

runner = CliRunner()


def test_mpc_topk_matches_plaintext_recommend(model_file: Path) -> None:
    from privrec.models import load_model

    model = load_model(model_file)
    for user in model.user_ids_:  # a user whose top-5 plaintext scores are well separated
        hist = model.user_items_[model.user_index([user])]
        ref, scores = model.recommend_history(hist, k=5)
        if np.all(-np.diff(scores[0]) > 2e-3):
            break
    res = runner.invoke(
        app, ["mpc", "topk", str(model_file), "--user", str(user), "-k", "4", "--secret-items"]
    )
    assert res.exit_code == 0, res.output
    assert f"secure top-4 for user {user}" in res.output
    assert "item factors secret" in res.output and "bytes sent" in res.output
    rows = [line.split("│") for line in res.output.splitlines() if line.count("│") >= 2]
    shown = [r[2].strip() for r in rows if r[2].strip().isdigit()]
    assert shown == [str(i) for i in model.item_ids_[ref[0][:4]]]


def test_mpc_topk_refuses_out_of_bound_user(model_file: Path) -> None:
    res = runner.invoke(
        app, ["mpc", "topk", str(model_file), "--user", "3", "--user-norm-bound", "1e-6"]
    )
    assert res.exit_code == 1
    assert "InvalidInputError" in res.output and "user_norm_bound" in res.output


def test_mpc_party_runs_three_cli_processes(tmp_path: Path) -> None:
    """The deployment path: `mpc keys`, then each party its own `privrec mpc party` process
    with its own input only, over mutually authenticated TLS.

    Also: fewer items left than k → the list is padded with -1."""
    rng = np.random.default_rng(11)
    y = rng.normal(0.0, 0.3, size=(20, 4))
    u = np.array([0.6, -0.3, 0.2, 0.4])
    np.save(tmp_path / "u.npy", u)
    keep = np.array([3, 11])  # everything else is excluded: k = 3 > 2 items left
    np.save(tmp_path / "seen.npy", np.setdiff1d(np.arange(20), keep))
    np.save(tmp_path / "y.npy", y)
    keys = runner.invoke(app, ["mpc", "keys", str(tmp_path / "tls")])
    assert keys.exit_code == 0, keys.output
    ports = free_ports(3)
    common = ["--n-items", "20", "--factors", "4", "-k", "3", "--timeout", "60"]
    common += ["--tls-dir", str(tmp_path / "tls")]
    for p in ports:
        common += ["--party", f"127.0.0.1:{p}"]
    own = [
        ["--user-vector", str(tmp_path / "u.npy"), "--exclude", str(tmp_path / "seen.npy")],
        ["--item-factors", str(tmp_path / "y.npy")],
        [],
    ]
    cmd = [sys.executable, "-m", "privrec.cli.main", "mpc", "party"]
    procs = [
        subprocess.Popen(
            [*cmd, "--id", str(i), *common, *own[i]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(3)
    ]
    try:
        outs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    best = keep[np.argsort(-(y[keep] @ u))]
    expected = f"{best[0]} {best[1]} -1"  # padded like Recommender.recommend
    assert f"top-k items: {expected}" in outs[0]
    assert "receives no output" in outs[1] and "receives no output" in outs[2]
    assert "top-k items" not in outs[1] + outs[2]


def _private_model(model_file: Path) -> tuple[Path, Path]:
    """A DPALS file (no users in it) trained on the model_file's data, and one user's history."""
    import warnings

    from privrec.data import load
    from privrec.models import DPALS

    data = load(model_file.parent / "u.data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DPALS(epsilon=8.0, delta=1e-3, unit="user", factors=4, seed=0).fit(data)
    path = model.save(model_file.parent / "dpals.npz")
    x = data.matrix.tocsr()
    items = data.item_ids[x.indices[x.indptr[2] : x.indptr[3]]]
    hist = model_file.parent / "history.txt"
    hist.write_text("\n".join(str(i) for i in items) + "\n999999\n")  # one unknown item
    return path, hist


def test_mpc_topk_with_a_history_for_a_private_model(model_file: Path) -> None:
    from privrec.cli.common import load_history
    from privrec.models import load_model

    path, hist = _private_model(model_file)
    model = load_model(path)
    assert model.n_users_ == 0 or getattr(model, "_released_only", False)
    res = runner.invoke(app, ["mpc", "topk", str(path), "--history", str(hist), "-k", "3"])
    assert res.exit_code == 0, res.output
    assert "secure top-3 for the history in history.txt" in res.output
    assert "1 listed item(s) are not in the model's catalogue" in res.output
    idx, _ = load_history(hist, model.item_ids_)
    row = np.zeros((1, model.n_items_))
    row[0, idx] = 1
    ref, _ = model.recommend_history(row, k=3)
    rows = [line.split("│") for line in res.output.splitlines() if line.count("│") >= 2]
    shown = {r[2].strip() for r in rows if r[2].strip().isdigit()}
    assert len(shown & {str(i) for i in model.item_ids_[ref[0]]}) >= 2  # ties may swap one
    bad = runner.invoke(app, ["mpc", "topk", str(path), "--user", "3"])
    assert bad.exit_code == 1 and "--history" in bad.output
    both = runner.invoke(app, ["mpc", "topk", str(path)])
    assert both.exit_code == 1 and "exactly one of --user" in both.output


def test_mpc_export_feeds_three_party_processes_that_print_external_ids(
    model_file: Path, tmp_path: Path
) -> None:
    from privrec.models import load_model

    model = load_model(model_file)
    for user in model.user_ids_:  # a user whose top-3 plaintext scores are well separated
        hist = model.user_items_[model.user_index([user])]
        ref, scores = model.recommend_history(hist, k=3)
        if np.all(-np.diff(scores[0]) > 2e-3):
            break
    out = tmp_path / "inputs"
    res = runner.invoke(
        app, ["mpc", "export", str(model_file), "--user", str(user), "-k", "3", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert (out / "party-0" / "user-vector.npy").stat().st_mode & 0o077 == 0
    commands = [line for line in res.output.splitlines() if line.startswith("privrec mpc party")]
    assert len(commands) == 3
    ports = free_ports(3)
    procs = []
    for line in commands:
        for p in ports:
            line = line.replace(
                "HOST0:PORT" if p == ports[0] else "HOST1:PORT" if p == ports[1] else "HOST2:PORT",
                f"127.0.0.1:{p}",
            )
        args = [*line.split()[1:], "--timeout", "60"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "privrec.cli.main", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    expected = " ".join(str(i) for i in model.item_ids_[ref[0]])
    assert f"top-k items: {expected}" in outs[0]  # external ids, as `mpc topk` prints


def test_secret_item_factors_are_written_for_their_holder_only(
    model_file: Path, tmp_path: Path
) -> None:
    """A reviewer found ``party-1/item-factors.npy`` (the model holder's secret in
    secret-items mode) written with the default mode 0644 while ``party-0/`` was 0600."""
    from privrec.models import load_model
    from privrec.secure.mpc import MPCParams
    from privrec.secure.mpc_local import export_party_inputs

    model = load_model(model_file)
    row = model.user_items_[model.user_index([model.user_ids_[0]])].toarray().ravel()
    bound = float(np.linalg.norm(model.item_factors_, axis=1).max()) * 1.01
    params = MPCParams(user_norm_bound=100.0, item_norm_bound=bound)
    export_party_inputs(model, row, tmp_path / "secret", k=3, public_items=False, params=params)
    holder = tmp_path / "secret" / "party-1"
    assert holder.stat().st_mode & 0o077 == 0
    assert (holder / "item-factors.npy").stat().st_mode & 0o077 == 0
    export_party_inputs(model, row, tmp_path / "open", k=3, public_items=True, params=params)
    assert (tmp_path / "open" / "public" / "item-factors.npy").exists()
