"""Fuzzing the model-file reader (issue 11): only privrec's typed errors may escape, and a file
that is accepted must work and round-trip.

Hypothesis mutates real model files of every built-in kind at four levels — raw bytes of the
archive, raw bytes of one ``.npy`` member (header or data), one value anywhere in the JSON
metadata, and one array replaced by an arbitrary one — and loads the result. Each try ends as

* ``typed``: a :class:`~privrec.errors.PrivrecError` (the loader refused it, naming the file);
* ``accepted``: it loaded; it must then score a history without error, save and reload to the
  same scores, and (private models) carry a guarantee whose ε the events reproduce — a failure
  of any of that is ``wrong``;
* ``crash``: any other exception.

The budget is bounded (``PRIVREC_FUZZ_EXAMPLES`` per level, default 60); the counts of the
last run are printed by ``test_zz_counts`` (run with ``-s`` to see them).
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privrec.data.synthetic import synthetic
from privrec.errors import PrivacyWarning, PrivrecError
from privrec.models import (
    DPALS,
    DPEASE,
    EASE,
    DPPopularity,
    ImplicitALS,
    ItemKNN,
    Popularity,
    load_model,
)

EXAMPLES = int(os.environ.get("PRIVREC_FUZZ_EXAMPLES", "60"))
COUNTS: Counter[str] = Counter()
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
LIMIT = 32 << 20  # the loader's size cap during fuzzing


def _build(tmp: Path) -> dict[str, Path]:
    data = synthetic(n_users=120, n_items=30, seed=3)
    models: dict[str, Any] = {
        "dpals": DPALS(epsilon=2.0, delta=1e-6, unit="user", factors=4, seed=0),
        "dpease": DPEASE(epsilon=2.0, delta=1e-6, unit="user", head_min=10, seed=0),
        "dppopularity": DPPopularity(epsilon=1.0, delta=1e-6, unit="user", seed=0),
        "ease": EASE(regularization=5.0),
        "als": ImplicitALS(factors=4, iterations=2),
        "itemknn": ItemKNN(neighbours=5),
        "popularity": Popularity(),
    }
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        for name, model in models.items():
            out[name] = model.fit(data).save(tmp / f"{name}.npz")
    return out


_FILES: dict[str, Path] = {}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not _FILES:
        _FILES.update(_build(tmp_path_factory.mktemp("fuzz-base")))
    return _FILES


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def pack(m: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in m.items():
            zf.writestr(name, body)
    return buf.getvalue()


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _history(n_items: int) -> np.ndarray:
    h = np.zeros((2, n_items), np.float32)
    h[0, : min(3, n_items)] = 1.0
    return h


def outcome(path: Path) -> str:
    """Load ``path`` and classify the result; raises AssertionError on crash or wrong."""
    COUNTS["tries"] += 1
    try:
        model = load_model(path, max_bytes=LIMIT)
    except PrivrecError:
        COUNTS["typed"] += 1
        return "typed"
    except Exception as exc:  # anything else escaping the loader is a bug
        COUNTS["crash"] += 1
        raise AssertionError(f"untyped {type(exc).__name__} escaped load_model: {exc}") from exc
    COUNTS["accepted"] += 1
    try:
        hist = _history(model.n_items_)
        items, scores = model.recommend_history(hist, k=5)
        assert items.shape == (2, min(5, model.n_items_))
        assert not np.isnan(scores).any(), "NaN scores"
        again = load_model(model.save(path.with_name(path.stem + "-again.npz")), max_bytes=LIMIT)
        items2, scores2 = again.recommend_history(hist, k=5)
        np.testing.assert_array_equal(items, items2)
        np.testing.assert_allclose(scores, scores2, rtol=1e-6)
        g = getattr(model, "guarantee_", None)
        if g is not None:
            eps = g.recompute_epsilon()
            assert math.isclose(eps, g.epsilon, rel_tol=0.05) or (
                math.isinf(eps) and math.isinf(g.epsilon)
            ), "accepted a guarantee its events do not reproduce"
    except Exception as exc:
        COUNTS["wrong"] += 1
        raise AssertionError(f"accepted file misbehaves: {type(exc).__name__}: {exc}") from exc
    return "accepted"


KINDS = ["dpals", "dpease", "dppopularity", "ease", "als", "itemknn", "popularity"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=8,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    obj[path[0]] = _set(obj[path[0]], path[1:], value)
    return obj


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_fuzz_raw_archive_bytes(
    files: dict[str, Path], tmp_path: Path, kind: str, data: st.DataObject
) -> None:
    blob = bytearray(files[kind].read_bytes())
    op = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if op == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path / "f.npz"
    path.write_bytes(bytes(blob))
    outcome(path)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_fuzz_npy_member_bytes(
    files: dict[str, Path], tmp_path: Path, kind: str, data: st.DataObject
) -> None:
    m = members(files[kind])
    name = data.draw(st.sampled_from(sorted(m)))
    body = bytearray(m[name])
    where = data.draw(st.sampled_from(["header", "data", "anywhere"]))
    hi = min(len(body), 128) if where == "header" else len(body)
    lo = min(128, len(body) - 1) if where == "data" else 0
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(lo, max(lo, hi - 1)))
        body[i] = data.draw(st.integers(0, 255))
    m[name] = bytes(body)
    path = tmp_path / "f.npz"
    path.write_bytes(pack(m))
    outcome(path)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data(), value=json_values)
def test_fuzz_metadata_values(
    files: dict[str, Path], tmp_path: Path, kind: str, data: st.DataObject, value: Any
) -> None:
    m = members(files[kind])
    meta = json.loads(np.load(io.BytesIO(m["__meta__.npy"])).tobytes())
    target = data.draw(st.sampled_from(_paths(meta)))
    meta = _set(meta, target, value)
    text = json.dumps(meta, allow_nan=True).encode()
    m["__meta__.npy"] = npy(np.frombuffer(text, dtype=np.uint8))
    path = tmp_path / "f.npz"
    path.write_bytes(pack(m))
    outcome(path)


arrays = st.one_of(
    st.builds(
        lambda dt, shape, seed: np.random.default_rng(seed).standard_normal(shape).astype(dt),
        st.sampled_from(["<f4", "<f8", ">f8", "<i8", "<i4", "|u1", "|b1"]),
        st.lists(st.integers(0, 50), max_size=3).map(tuple),
        st.integers(0, 2**32 - 1),
    ),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=60).map(np.array),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=60).map(
        lambda v: np.array(v, dtype=np.int64)
    ),
    st.lists(st.text(max_size=5), max_size=30).map(lambda v: np.array(v, dtype=str)),
)


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data(), arr=arrays, declare=st.booleans())
def test_fuzz_replaced_arrays(
    files: dict[str, Path],
    tmp_path: Path,
    kind: str,
    data: st.DataObject,
    arr: np.ndarray,
    declare: bool,
) -> None:
    m = members(files[kind])
    key = data.draw(st.sampled_from(sorted(n[:-4] for n in m if n != "__meta__.npy")))
    m[f"{key}.npy"] = npy(arr)
    if declare:  # a consistent edit: the metadata declares the new dtype and shape
        meta = json.loads(np.load(io.BytesIO(m["__meta__.npy"])).tobytes())
        meta["arrays"][key] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
        m["__meta__.npy"] = npy(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    path = tmp_path / "f.npz"
    path.write_bytes(pack(m))
    outcome(path)


def test_unmodified_files_are_accepted(files: dict[str, Path], tmp_path: Path) -> None:
    for path in files.values():
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        assert outcome(copy) == "accepted"


def test_zz_counts() -> None:
    """Summary of this run (printed with ``-s``): no crash, no wrong result."""
    print(
        f"\nmodel-file fuzz: {COUNTS['tries']} tries, {COUNTS['typed']} typed errors, "
        f"{COUNTS['accepted']} accepted (round-tripped), {COUNTS['crash']} crashes, "
        f"{COUNTS['wrong']} wrong"
    )
    assert COUNTS["crash"] == 0 and COUNTS["wrong"] == 0
