"""docs/cross_silo.md's command-line session, run line by line as written, one process per party.

Two substitutions only: a small generated LightGCN-style folder for the shared dataset's name,
and free ports for 7100-7102 (other tests or services may hold those).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "cross_silo.md"


def _commands() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Command line") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    joined = block.group(1).replace("\\\n", " ")
    return [line.split("#")[0].strip() for line in joined.splitlines() if line.strip()]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _split_folder(folder: Path, n_users: int = 90, n_items: int = 30) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    parts: dict[str, list[str]] = {"train.txt": [], "valid.txt": [], "test.txt": []}
    for u in range(n_users):
        own = rng.choice(n_items, size=8, replace=False)
        for name, items in (("train.txt", own[:6]), ("valid.txt", own[6:7]), ("test.txt", own[7:])):
            parts[name].append(" ".join(str(v) for v in [u, *items.tolist()]))
    for name, lines in parts.items():
        (folder / name).write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_the_documented_session_runs_as_written(tmp_path: Path) -> None:
    commands = _commands()
    assert commands[0].startswith("privrec silo split ml-1m-implicit-r3")
    _split_folder(tmp_path / "data")
    ports = ",".join(str(p) for p in _free_ports(3))
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    background: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for i, line in enumerate(commands):
            line = line.replace("ml-1m-implicit-r3", "data").replace("7100,7101,7102", ports)
            args = shlex.split(line.rstrip("&").strip())
            assert args[0] == "privrec"
            argv = [sys.executable, "-m", "privrec.cli.main", *args[1:]]
            log = open(tmp_path / f"{i:02d}.log", "wb")  # noqa: SIM115 (closed with the process)
            proc = subprocess.Popen(
                argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env
            )
            if line.endswith("&"):
                background.append((line, proc))
                continue
            rc = proc.wait(300)
            out = (tmp_path / f"{i:02d}.log").read_text()
            assert rc == 0, f"{line}\n{out}"
        for line, proc in background:  # every party finished its session cleanly
            assert proc.wait(60) == 0, line
    finally:
        for _, proc in background:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    at = {c.split()[1] + " " + c.split()[2]: i for i, c in enumerate(commands)}
    explain = (tmp_path / f"{at['privacy explain']:02d}.log").read_text()
    assert "rdp" in explain.lower()
    # the released model evaluated on the split without training (scored from histories)
    evaluated = (tmp_path / f"{at['evaluate --model-file']:02d}.log").read_text()
    assert "dpals (model.npz)" in evaluated and "recall" in evaluated.lower()
    from privrec.models import DPALS, load_model

    model = load_model(tmp_path / "model.npz")
    assert isinstance(model, DPALS) and model.n_users_ == 0
    catalogue = (tmp_path / "silos" / "items.txt").read_text().split()
    assert [str(v) for v in model.item_ids_.tolist()] == catalogue
    assert model.privacy_guarantee.epsilon <= 5.0
