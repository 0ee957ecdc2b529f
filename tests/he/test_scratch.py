"""The HE scratch space never outlives its process, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("tenseal", reason="TenSEAL (the [he] extra) is not installed")

from privrec.secure.he import CKKSParams, TenSEALBackend
from privrec.secure.he_backend import _scratch_base, sweep_stale_scratch

_CHILD = textwrap.dedent(
    """
    import sys, time
    from privrec.secure.he import CKKSParams, TenSEALBackend
    backend = TenSEALBackend(scratch=sys.argv[1])
    ctx = backend.keygen(CKKSParams(), rotations=False)
    backend.context_bytes(ctx, include_secret_key=True)  # the secret key passes through
    print(backend._path, flush=True)
    time.sleep(120)
    """
)


def _killed_child(scratch: str) -> tuple[int, str]:
    """Start a process that wrote a secret key through its scratch space, then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, scratch], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return proc.pid, path


def _scratch_dirs(pid: int) -> list[Path]:
    return sorted(_scratch_base().glob(f"privrec-he-{pid}-*"))


def test_memory_scratch_leaves_nothing_after_kill_9() -> None:
    pid, path = _killed_child("auto")
    assert path.startswith("/proc/self/fd/")  # an anonymous in-memory file
    assert _scratch_dirs(pid) == []
    assert not any(_scratch_base().glob(f"privrec-he-{pid}*"))


def test_directory_scratch_left_by_kill_9_is_swept_at_the_next_start() -> None:
    pid, path = _killed_child("directory")
    stale = _scratch_dirs(pid)
    assert stale and Path(path).parent == stale[0]  # SIGKILL: no chance to clean up
    backend = TenSEALBackend(scratch="directory")  # the next run sweeps it by pid
    try:
        assert _scratch_dirs(pid) == []
        own = Path(backend._path).parent
        assert own.name.startswith(f"privrec-he-{os.getpid()}-") and own.is_dir()
        assert sweep_stale_scratch() == []  # a live process's folder is left alone
    finally:
        backend.close()
    assert not own.exists()


def test_backend_works_through_memory_scratch_and_closes() -> None:
    backend = TenSEALBackend()
    ctx = backend.keygen(CKKSParams(), rotations=False)
    raw = backend.context_bytes(ctx, include_secret_key=True)
    assert backend.load_context(raw).secret_key is not None
    fd = int(backend._path.rsplit("/", 1)[1]) if backend.scratch == "memory" else None
    backend.close()
    if fd is not None:
        with pytest.raises(OSError):
            os.fstat(fd)
