"""``privrec federated simulate`` end to end on a tiny LightGCN-style split, with a resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from privrec.cli.main import app

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def _split(folder: Path, n_users: int = 120, n_items: int = 20) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    files: dict[str, list[str]] = {"train.txt": [], "valid.txt": [], "test.txt": []}
    for u in range(n_users):
        own = rng.permutation(np.arange(u % 2, n_items, 2))[:7]
        parts = {"train.txt": own[:5], "valid.txt": own[5:6], "test.txt": own[6:]}
        for name, items in parts.items():
            files[name].append(" ".join(str(v) for v in [u, *items.tolist()]))
    for name, lines in files.items():
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def _one_round(data: Path, ck: Path, budget: list[str], *, clients: int) -> list[str]:
    """``federated simulate`` for one round with a checkpoint (the checkpoint is the last two)."""
    return [
        "federated", "simulate", "-d", str(data), *budget, "--rounds", "1",
        "--clients-per-round", str(clients), "--head-items", "10", "--factors", "2", "--seed", "0",
        "--checkpoint-dir", str(ck),
    ]  # fmt: skip


def test_simulate_reports_rounds_and_resumes(tmp_path: Path) -> None:
    data = _split(tmp_path / "split")
    ck = tmp_path / "ck"
    out = tmp_path / "rounds.json"
    args = [
        "federated", "simulate", "-d", str(data), "--noise-multiplier", "0.8", "--rounds", "2",
        "--clients-per-round", "60", "--head-items", "10", "--factors", "2", "--seed", "0",
        "--eval-every", "1", "--checkpoint-dir", str(ck), "--json", str(out),
        "-p", "clip_count_stddev=5.0",
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "FederatedMF rounds" in res.output and "differentially private" in res.output
    # the plain-language guarantee is printed as text: its P[...] is not eaten as rich markup,
    # and it names the privrec release that computed it
    flat = " ".join(res.output.split())
    assert "P[release ∈ S with your whole history] ≤" in flat, flat
    assert "Computed by privrec unknown" not in flat and "Computed by privrec 0." in flat
    assert "≈ 120 clients" in flat and "≈ ≈" not in flat  # rounded as in train, once
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[-1]["recall"] is not None
    assert (ck / "server.npz").exists()
    resume = ["federated", "simulate", "-d", str(data), "--checkpoint-dir", str(ck), "--resume"]
    more = CliRunner().invoke(app, [*resume, "--json", str(out)])
    assert more.exit_code == 0, more.output
    # the checkpointed config says 2 rounds: nothing left to do, the log is kept
    assert [r["round"] for r in json.loads(out.read_text())["rounds"]] == [1, 2]


def test_simulate_needs_a_budget(tmp_path: Path) -> None:
    data = _split(tmp_path / "split")
    res = CliRunner().invoke(app, ["federated", "simulate", "-d", str(data)])
    assert res.exit_code == 1
    assert "--epsilon" in res.output


def test_resume_keeps_the_runs_settings_and_refuses_conflicts(tmp_path: Path) -> None:
    data = _split(tmp_path / "split")
    ck = tmp_path / "ck"
    start = [
        "federated", "simulate", "-d", str(data), "--noise-multiplier", "0.8", "--rounds", "1",
        "--clients-per-round", "60", "--head-items", "10", "--factors", "2", "--seed", "0",
        "--secure", "full", "--dropout", "0.05", "--threat-model", "malicious",
        "--checkpoint-dir", str(ck), "-p", "clip_count_stddev=5.0",
    ]  # fmt: skip
    first = CliRunner().invoke(app, start)
    assert first.exit_code == 0, first.output
    # not a terminal: one line per round on stderr, and the ε line first
    assert "round 1/1: ε so far" in first.output
    assert first.output.startswith("noise multiplier z = 0.8")
    assert "malicious server" in first.output
    resume = ["federated", "simulate", "-d", str(data), "--checkpoint-dir", str(ck), "--resume"]
    for flags, match in [
        (["--secure", "fast"], "secure='full'"),
        (["--dropout", "0.2"], "faults"),
        (["--epsilon", "1"], "--epsilon: a resumed run keeps"),
        (["--rounds", "0"], "already completed"),
    ]:
        res = CliRunner().invoke(app, [*resume, *flags])
        assert res.exit_code == 1, flags
        assert match in res.output, res.output
    # same settings are fine, and --rounds extends a fixed-noise run (never ignored)
    out = tmp_path / "r.json"
    more = CliRunner().invoke(
        app, [*resume, "--secure", "full", "--rounds", "2", "--json", str(out)]
    )
    assert more.exit_code == 0, more.output
    assert "resuming after round 1 of 2 (secure=full" in more.output
    rounds = json.loads(out.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["secure"] == "secagg+ (full protocol)" for r in rounds)


def test_extending_an_epsilon_calibrated_run_is_refused(tmp_path: Path) -> None:
    data = _split(tmp_path / "split")
    ck = tmp_path / "ck"
    start = _one_round(data, ck, ["--epsilon", "5"], clients=60)
    first = CliRunner().invoke(app, start)
    assert first.exit_code == 0, first.output
    assert first.output.startswith("ε asked 5 at δ = 1e-05; each completed round is charged its")
    assert "the true loss is ≈" in " ".join(first.output.split())
    assert "ε spent" in first.output and "of 5 asked" in first.output
    res = CliRunner().invoke(
        app, ["federated", "simulate", "-d", str(data), "--checkpoint-dir", str(ck), "--resume",
              "--rounds", "3"]
    )  # fmt: skip
    assert res.exit_code == 1 and "calibrated for 1 rounds" in res.output


def test_simulate_prints_and_writes_rounded_cohort_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening ``--json``, the printed table and the checkpoint's files: sampled cohorts,
    survivors and bytes are rounded in the outputs (no guarantee covers them) and absent from
    the checkpoint; the exact log exists only in memory (captured here from the run)."""
    import re

    from privrec.evaluation.protocol import round_count
    from privrec.federated.sim_reports import CHECKPOINT_KEYS
    from privrec.federated.training import _SIM_STATE, FederatedSimulation

    captured: list[dict[str, Any]] = []
    run = FederatedSimulation.run

    def keep(self: FederatedSimulation, *a: Any, **k: Any) -> list[dict[str, Any]]:
        out = run(self, *a, **k)
        captured.extend(out)
        return out

    monkeypatch.setattr(FederatedSimulation, "run", keep)

    data = _split(tmp_path / "split", n_users=900)
    ck, out = tmp_path / "ck", tmp_path / "rounds.json"
    args = [
        "federated", "simulate", "-d", str(data), "--noise-multiplier", "0.8", "--rounds", "2",
        "--clients-per-round", "450", "--head-items", "10", "--factors", "2", "--seed", "0",
        "--dropout", "0.05", "--checkpoint-dir", str(ck), "--json", str(out),
        "-p", "clip_count_stddev=5.0",
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    exact = [dict(r) for r in captured]
    secret = {
        n
        for r in exact
        for n in (r["sampled"], r["survivors"], r["bytes_up"], *r["dropped"].values())
        if round_count(n) != n
    }
    assert {r["sampled"] for r in exact} <= secret  # cohorts of ~450 are not round numbers
    written = json.loads(out.read_text())["rounds"]
    for r in written:
        assert r["sampled"].startswith("≈") and r["survivors"].startswith("≈")
        assert all(v.startswith("≈") or v in ("0", "< 10") for v in r["dropped"].values())
        assert r["bytes_up"] == round_count(r["bytes_up"])
    # the checkpoint: its files, opened; no count of people in either
    assert sorted(p.name for p in ck.iterdir()) == ["server.npz", _SIM_STATE]
    state = json.loads((ck / _SIM_STATE).read_text())
    assert [r["round"] for r in state["reports"]] == [1, 2]
    assert all(set(r) <= set(CHECKPOINT_KEYS) for r in state["reports"])
    with np.load(ck / "server.npz") as npz:
        meta_text = npz["__meta__"].tobytes().decode()
    history = json.loads(meta_text)["history"]
    assert history and not any("survivors" in h or "sampled" in h for h in history)
    texts = {
        "stdout": res.output,
        "json": out.read_text(),
        "simulation.json": (ck / _SIM_STATE).read_text(),
        "server.npz": meta_text,
    }
    for name, text in texts.items():
        for n in secret:
            assert re.search(rf"(?<![\d.,])({n:,}|{n})(?!\d)", text) is None, (name, n)
    assert "cohort sizes are not covered" in " ".join(res.output.split())


def test_simulate_signs_the_saved_model(tmp_path: Path) -> None:
    """``--sign-key`` as in ``privrec train``: the saved FederatedMF verifies with the public
    key; without ``--out`` there is nothing to sign, refused before any round."""
    from privrec.models import load_model
    from privrec.models.signing import fingerprint, generate_keypair, load_verify_key

    private, public = generate_keypair(tmp_path / "keys")
    data = _split(tmp_path / "split", n_users=60)
    model = tmp_path / "fed.npz"
    # noise multiplier 5, not 0.8: signing is the point, and the narrower privacy-loss
    # distribution makes the accounting and the re-verification on load 6 s instead of 20 s
    args = [
        "federated", "simulate", "-d", str(data), "--noise-multiplier", "5.0", "--rounds", "1",
        "--clients-per-round", "30", "--head-items", "10", "--factors", "2", "--seed", "0",
        "--aggregation", "central", "--eval-every", "1", "-p", "clip_count_stddev=5.0",
        "--sign-key", str(private),
    ]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--out", str(model)])
    assert res.exit_code == 0, res.output
    fp = fingerprint(load_verify_key(public))
    assert f"as {fp}" in " ".join(res.output.split())
    loaded = load_model(model, verify_key=public)
    assert loaded.file_signature_ is not None and loaded.file_signature_.verified
    nowhere = CliRunner().invoke(app, args)
    assert nowhere.exit_code == 1 and "--sign-key needs --out" in nowhere.output
    assert "FederatedMF rounds" not in nowhere.output


def test_the_population_is_in_no_log_or_checkpoint(tmp_path: Path) -> None:
    """With every user sampled (q = 1) the log printed q × the population — the exact count —
    and the server checkpoint stored it; both are rounded or gone now (resume passes it)."""
    import re

    data = _split(tmp_path / "split", n_users=137)
    ck = tmp_path / "ck"
    args = _one_round(data, ck, ["--noise-multiplier", "2"], clients=5000)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    with np.load(ck / "server.npz") as npz:
        meta_text = npz["__meta__"].tobytes().decode()
    for name, text in {"log": res.output, "server.npz": meta_text}.items():
        assert re.search(r"(?<![\d.,])137(?!\d)", text) is None, (name, text[:2000])
    res = CliRunner().invoke(app, [*args[:-2], "--checkpoint-dir", str(ck), "--rounds", "2"])
    assert res.exit_code == 0, res.output  # resumes with the population read from the data


def test_simulate_takes_an_explicit_catalogue(tmp_path: Path) -> None:
    """``--items FILE`` as in ``privrec train``: the saved model's columns are the given
    catalogue (items nobody holds included), its guarantee says the catalogue was passed
    explicitly, and the log prints the catalogue's (public) size exactly — without it, the
    data's item count is learnt from the data and prints rounded."""
    from privrec.models import load_model

    data = _split(tmp_path / "split", n_users=60)
    catalogue = [str(i) for i in range(20)] + ["100", "101"]
    items = tmp_path / "items.txt"
    items.write_text("item\n" + "\n".join(catalogue) + "\n")
    model = tmp_path / "fed.npz"
    args = [
        "federated", "simulate", "-d", str(data), "--noise-multiplier", "5.0", "--rounds", "1",
        "--clients-per-round", "30", "--head-items", "10", "--factors", "2", "--seed", "0",
        "--aggregation", "central", "--eval-every", "1", "-p", "clip_count_stddev=5.0",
    ]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--items", str(items), "--out", str(model)])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "clients, 22 items;" in flat and "passed explicitly" in flat, flat
    assert "pass the catalogue explicitly" not in flat
    loaded = load_model(model)
    assert [str(i) for i in loaded.item_ids_] == catalogue
    assert loaded.guarantee_.catalogue == "given"
    plain = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "plain.npz")])
    assert plain.exit_code == 0, plain.output
    flat = " ".join(plain.output.split())
    assert "clients, ≈ 20 items;" in flat and "--items FILE" in flat, flat
    assert load_model(tmp_path / "plain.npz").guarantee_.catalogue == "data"
    items.write_text("0\n1\n")
    short = CliRunner().invoke(app, [*args, "--items", str(items)])
    assert short.exit_code == 1 and "not in the given catalogue" in short.output


def test_simulate_reads_a_shared_dataset_folder_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ml100k_like: Any
) -> None:
    """``-d ml-100k`` (docs/federated.md): a shared dataset folder holding one interaction file
    is read through that file, said on stderr; a folder without one is refused *as a folder*,
    and a file whose name does not give its format away asks for ``--format``."""
    shared = tmp_path / "shared"
    ml = shared / "mini-100k"
    ml100k_like(ml, users=60, per_user=6)
    (ml / "u.item").write_text("1|A\n")
    (shared / "no-ratings").mkdir()
    (shared / "no-ratings" / "README").write_text("nothing here\n")
    monkeypatch.setenv("PRIVREC_DATA", str(shared))
    args = [
        "--noise-multiplier", "5.0", "--rounds", "1", "--clients-per-round", "30",
        "--head-items", "10", "--factors", "2", "--seed", "0", "--aggregation", "central",
        "-p", "clip_count_stddev=5.0",
    ]  # fmt: skip
    res = CliRunner().invoke(app, ["federated", "simulate", "-d", "mini-100k", *args])
    assert res.exit_code == 0, res.output
    assert f"reading {ml / 'u.data'}" in " ".join(res.stderr.split())
    assert "FederatedMF rounds" in res.stdout
    bad = CliRunner().invoke(app, ["federated", "simulate", "-d", "no-ratings", *args])
    assert bad.exit_code == 1 and "this is a folder, not a file" in bad.output, bad.output
    assert "cannot tell the format" not in bad.output
    odd = CliRunner().invoke(app, ["federated", "simulate", "-d", str(ml / "u.item"), *args])
    assert odd.exit_code == 1 and "pass --format (-f)" in odd.output, odd.output
    assert "format=" not in odd.output
