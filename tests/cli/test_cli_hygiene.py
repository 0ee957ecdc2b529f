"""Command-line hygiene (issue 10 item 7, issue 11 item 7): numbers checked at parse time,
weak δ refused, outputs checked before work, one-line errors and warnings, readable help,
progress in logs, and the numba cache in a per-user folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from privrec.cli.main import app

runner = CliRunner()


@pytest.fixture
def udata(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, 61):
        for t, i in enumerate(rng.choice(np.arange(1, 41), size=12, replace=False)):
            lines.append(f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + t}")
    path = tmp_path / "u.data"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--binarize", "nan"),
        ("--binarize", "inf"),
        ("--epsilon", "nan"),
        ("--epsilon", "-1"),
        ("--epsilon", "inf"),
        ("--delta", "0"),
        ("--delta", "1.5"),
        ("--delta", "nan"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time(
    udata: Path, tmp_path: Path, option: str, value: str
) -> None:
    out = tmp_path / "m.npz"
    res = runner.invoke(
        app,
        [
            "train",
            "-d",
            str(udata),
            "-m",
            "dppopularity",
            "--unit",
            "user",
            option,
            value,
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 2, res.output  # usage error, before anything is read
    assert "must be a finite number" in res.output
    assert not out.exists()


def test_bad_numbers_in_evaluate_and_report(udata: Path) -> None:
    res = runner.invoke(
        app, ["evaluate", "-d", str(udata), "-m", "popularity", "--test-fraction", "nan"]
    )
    assert res.exit_code == 2 and "finite" in res.output
    res = runner.invoke(app, ["report", "-d", str(udata), "-m", "dpals", "--epsilons", "1,nan"])
    assert res.exit_code == 2 and "finite" in res.output


def test_binarize_above_every_value_is_an_error_not_an_empty_model(
    udata: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.npz"
    res = runner.invoke(
        app, ["train", "-d", str(udata), "-m", "popularity", "--binarize", "99", "-o", str(out)]
    )
    assert res.exit_code == 1 and "nothing to train on" in res.output
    assert not out.exists()


def test_weak_delta_is_an_error_unless_forced(udata: Path, tmp_path: Path) -> None:
    args = [
        "train",
        "-d",
        str(udata),
        "-m",
        "dppopularity",
        "--epsilon",
        "1",
        "--delta",
        "0.05",
        "--unit",
        "user",
    ]
    res = runner.invoke(app, [*args, "-o", str(tmp_path / "a.npz")])
    assert res.exit_code == 1 and "--force-weak-delta" in res.output
    res = runner.invoke(app, [*args, "--force-weak-delta", "-o", str(tmp_path / "b.npz")])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and ".py:" not in res.output  # one line, no source path


def test_a_weak_epsilon_warns(udata: Path, tmp_path: Path) -> None:
    """Settings that weaken privacy warn: ε = 50 trains, with its plain-language reading."""
    base = ["train", "-d", str(udata), "-m", "dppopularity", "--delta", "1e-6", "--unit", "user"]
    res = runner.invoke(app, [*base, "--epsilon", "50", "-o", str(tmp_path / "weak.npz")])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "PrivacyWarning: epsilon=50 is a weak guarantee" in out and "more than 99.99%" in out
    res = runner.invoke(app, [*base, "--epsilon", "2", "-o", str(tmp_path / "ok.npz")])
    assert res.exit_code == 0 and "weak guarantee" not in res.output


def test_unwritable_outputs_fail_before_any_work(udata: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = blocker / "out.json"
    t0 = time.perf_counter()
    res = runner.invoke(app, ["evaluate", "-d", str(udata), "-m", "als", "--json", str(bad)])
    assert res.exit_code == 1 and "OutputPathError" in res.output
    assert "fitting" not in res.output and "Traceback" not in res.output
    assert time.perf_counter() - t0 < 5
    res = runner.invoke(
        app, ["train", "-d", str(udata), "-m", "popularity", "-o", str(blocker / "m.npz")]
    )
    assert res.exit_code == 1 and "OutputPathError" in res.output
    res = runner.invoke(app, ["train", "-d", str(udata), "-m", "popularity", "-o", str(tmp_path)])
    assert res.exit_code == 1  # a folder is not a model file
    res = runner.invoke(
        app, ["report", "-d", str(udata), "-m", "popularity", "-o", str(blocker / "r.html")]
    )
    assert res.exit_code == 1 and "OutputPathError" in res.output


def test_missing_input_is_reported_as_missing(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "-d", str(tmp_path / "nope.csv"), "-m", "popularity"])
    assert res.exit_code == 1 and "not found" in res.output and "format" not in res.output
    res = runner.invoke(app, ["evaluate", "-d", str(tmp_path / "nope"), "-m", "popularity"])
    assert res.exit_code == 1 and "not found" in res.output


def test_os_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from privrec.cli.common import handle_errors

    for exc in (
        PermissionError(13, "Permission denied", "/x/y"),
        IsADirectoryError(21, "Is a directory", "/x"),
        OSError(28, "No space left on device"),
    ):
        with pytest.raises(typer.Exit) as info, handle_errors():
            raise exc
        assert info.value.exit_code == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and type(exc).__name__ in err
        assert "Traceback" not in err


def test_train_help_keeps_table_names() -> None:
    res = runner.invoke(app, ["train", "--help"])
    assert res.exit_code == 0
    assert "[params]" in res.output and "[data]" in res.output


def test_progress_lines_when_stderr_is_a_log(udata: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "train",
            "-d",
            str(udata),
            "--binarize",
            "3",
            "-m",
            "dpals",
            "--epsilon",
            "2",
            "--delta",
            "1e-3",
            "--unit",
            "user",
            "-p",
            "factors=4",
            "-p",
            "iterations=2",
            "-o",
            str(tmp_path / "m.npz"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "fitting dpals: step 1/2" in res.output and "fitting dpals: step 2/2" in res.output


def test_cold_kernel_cache_notice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from privrec.cli import common

    monkeypatch.setitem(common.STATE, "compile_noted", False)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "empty"))
    assert common.kernels_cold()
    common.compile_notice("dpals")
    common.compile_notice("dpals")  # once per run
    err = capsys.readouterr().err
    assert err.count("compiling kernels once (about a minute)") == 1
    common.compile_notice("popularity")  # no kernels: no notice


def test_numba_cache_defaults_to_a_per_user_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    code = "import privrec, os, numba; print(os.environ['NUMBA_CACHE_DIR']); print(numba.config.CACHE_DIR)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    want = str(tmp_path / "privrec" / "numba")
    assert res.stdout.split() == [want, want]
    # an explicit NUMBA_CACHE_DIR wins
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.stdout.split() == [str(tmp_path / "mine")] * 2


def test_usage_errors_print_one_line_from_the_script() -> None:
    """`privrec` (the script and `python -m privrec`) prints a usage error as one line, exit 2."""
    import subprocess
    import sys

    for args, needle in (
        (["train", "--binarize", "nan", "-d", "x"], "must be a finite number"),
        (["trainx"], "No such command"),
        (["train", "--no-such-option"], "No such option"),
    ):
        res = subprocess.run(
            [sys.executable, "-m", "privrec", *args], capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: UsageError:"), res.stderr
        assert needle in lines[0] and "--help" in lines[0]
    ok = subprocess.run(
        [sys.executable, "-m", "privrec", "--help"], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0 and "Usage" in ok.stdout


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["trian"], "Did you mean 'train'?"),
        (["privacy", "explian", "x"], "Did you mean 'explain'?"),
        (["federated", "simulat"], "Did you mean 'simulate'?"),
    ],
)
def test_a_mistyped_command_is_suggested_once(args: list[str], suggestion: str) -> None:
    """click already names the close matches; typer used to append them a second time."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert res.output.count("Did you mean") == 1 and suggestion in res.output, res.output
