"""Shared fixtures: real-data finder that skips with a reason, small synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from privrec.data.shared import ENV_VAR, shared_dataset

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def require_dataset(name: str) -> Path:
    """Path of a shared real dataset, or skip the test saying where it was looked for."""
    path = shared_dataset(name)
    if path is None:
        pytest.skip(f"real dataset {name!r} not found in ../shared/data or ${ENV_VAR}")
    return path


def write_ml100k_like(folder: Path, users: int, per_user: int, items: int = 20) -> Path:
    """A tiny ``u.data`` (user, item, rating, time; tab-separated) in ``folder``, as a shared
    dataset folder holds it — for tests that find data by name under ``$PRIVREC_DATA``."""
    import numpy as np

    rng = np.random.default_rng(0)
    lines = [
        f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + i}"
        for u in range(1, users + 1)
        for i in rng.choice(np.arange(1, items + 1), size=per_user, replace=False)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    return folder / "u.data"


@pytest.fixture
def ml100k_like():  # type: ignore[no-untyped-def]
    """``ml100k_like(folder, users=…, per_user=…)`` -> the ``u.data`` written there."""
    return write_ml100k_like


@pytest.fixture
def dataset():  # type: ignore[no-untyped-def]
    """``dataset("ml-100k")`` -> Path, skipping when the shared data are absent."""
    return require_dataset


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A small ImplicitALS model (40 users × 60 items, 8 factors) trained through the CLI."""
    import numpy as np
    from typer.testing import CliRunner

    from privrec.cli.main import app

    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, 41):
        for t, i in enumerate(rng.choice(np.arange(1, 61), size=10, replace=False)):
            lines.append(f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + t}")
    data = tmp_path / "u.data"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "als.npz"
    res = CliRunner().invoke(
        app,
        ["train", "--data", str(data), "--model", "als", "-o", str(out), "-p", "factors=8"],
    )
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def pg_cluster():  # type: ignore[no-untyped-def]
    """One throw-away PostgreSQL cluster per test session (ledger and service tests share it),
    or the reason it could not start (a string)."""
    from privrec.governance.pgcluster import start, stop

    started = start()
    if isinstance(started, str):
        yield started
        return
    try:
        yield started
    finally:
        stop(started)


# ---------------------------------------------------------------- artifact membership checks
def scan_artifact(
    path: Path, *, user_ids: list[str], counts: list[int], denominators: list[int] = ()
) -> list[str]:
    """What in a written artifact identifies training users: ``[]`` when nothing does.

    Opens the file as privrec wrote it — an ``.npz`` model (every member, its names, shapes
    and values, and the JSON metadata), JSON, HTML/Markdown/CSV text, or a PNG (its text
    chunks) — and reports
    * a member that holds user data (``user_ids``, ``ui_*``);
    * any array with a dimension equal to one of ``counts`` (exact user count, interactions);
    * any number equal to one of ``counts``, or written as a standalone number in text;
    * any number in (0, 1) that is an exact multiple of ``1/d`` for ``d`` in ``denominators``
      (e.g. a sampling rate ``c / n_users`` reveals ``n_users``);
    * any of ``user_ids`` in any encoding numpy or JSON would use (UTF-8, UTF-32-LE).
    """
    import io
    import json
    import re
    import struct
    import zipfile

    import numpy as np

    problems: list[str] = []

    def numbers(obj: object, where: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                numbers(v, f"{where}.{k}")
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                numbers(v, f"{where}[{i}]")
        elif isinstance(obj, int | float) and not isinstance(obj, bool):
            check_number(float(obj), where)
        elif isinstance(obj, str):
            text(obj, where)

    def check_number(v: float, where: str) -> None:
        if v in counts:
            problems.append(f"{where}: exact count {v:g}")
        if 0 < v < 1:
            for d in denominators:
                c = v * d
                if abs(c - round(c)) < 1e-9 * d:
                    problems.append(f"{where}: {v!r} = {round(c)}/{d} reveals a count")

    def text(s: str, where: str) -> None:
        for uid in user_ids:
            if uid in s:
                problems.append(f"{where}: user id {uid!r}")
        for c in counts:
            for form in {str(c), f"{c:,}"}:
                if re.search(rf"(?<![\w.,]){re.escape(form)}(?![\w]|[.,]\d)", s):
                    problems.append(f"{where}: count {form} in text")

    def raw(b: bytes, where: str) -> None:
        for uid in user_ids:
            if uid.encode() in b or uid.encode("utf-32-le") in b:
                problems.append(f"{where}: user id {uid!r} in the bytes")

    blob = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                key = name.removesuffix(".npy")
                body = zf.read(name)
                raw(body, name)
                if key in ("user_ids", "ui_data", "ui_indices", "ui_indptr", "ui_shape"):
                    problems.append(f"{name}: user-data member")
                arr = np.load(io.BytesIO(body), allow_pickle=False)
                if key == "__meta__":
                    numbers(json.loads(arr.tobytes().decode()), "meta")
                    continue
                for dim in arr.shape:
                    if dim in counts:
                        problems.append(f"{name}: dimension {dim} equals a count")
                if arr.dtype.kind in "iuf" and arr.size:
                    flat = arr.ravel()
                    for c in counts:
                        if np.any(flat == c):
                            problems.append(f"{name}: holds the value {c}")
                    if arr.size <= 100_000:
                        for v in flat[(flat > 0) & (flat < 1)].astype(float)[:10_000]:
                            check_number(float(v), name)
                elif arr.dtype.kind == "U":
                    for s in arr.ravel().tolist():
                        text(str(s), name)
        return problems
    raw(blob, path.name)
    suffix = path.suffix.lower()
    if suffix == ".json":
        numbers(json.loads(blob.decode()), path.name)
    elif suffix == ".png":
        assert blob[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
        pos = 8
        while pos < len(blob):
            (length,) = struct.unpack(">I", blob[pos : pos + 4])
            kind = blob[pos + 4 : pos + 8]
            if kind in (b"tEXt", b"iTXt", b"zTXt"):
                text(blob[pos + 8 : pos + 8 + length].decode("latin-1"), f"png {kind.decode()}")
            pos += 12 + length
    else:
        body = blob.decode("utf-8")
        # embedded images are scanned as PNGs on their own; their base64 is not text
        text(re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", body), path.name)
    return problems


@pytest.fixture
def no_user_data():  # type: ignore[no-untyped-def]
    """``no_user_data(path, user_ids=[...], counts=[...])`` asserts the artifact reveals none."""

    def check(path: Path, **kw):  # type: ignore[no-untyped-def]
        problems = scan_artifact(Path(path), **kw)
        assert not problems, f"{path} identifies training users:\n" + "\n".join(problems[:20])

    return check


@pytest.fixture
def scan():  # type: ignore[no-untyped-def]
    """The raw scanner (to show it does fail on a file that holds user data)."""
    return scan_artifact
