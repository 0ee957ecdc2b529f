"""Model files that are small on disk but declare huge arrays: refused at their headers.

Each file below is consistent as far as the metadata goes (every declared shape matches its
``.npy`` header) and is a few hundred kilobytes on disk, but inflates to hundreds of megabytes
of zeros — giant factors, a giant catalogue, a giant EASE matrix, giant user arrays, padded
metadata. Before the layout and ratio checks the loader decompressed such arrays and only then
compared them with the model's parameters (a 0.85 MB file cost 2.8 GB and 31 s). Now each
must fail with a typed :class:`~privrec.errors.ModelFileError` naming the file and the
member, in well under a second and without allocating the arrays (``tracemalloc`` peak, and
the peak RSS of a fresh process for the catalogue bomb).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privrec.data.synthetic import synthetic
from privrec.errors import ModelFileError, PrivacyWarning
from privrec.models import DPALS, DPEASE, EASE, ItemKNN, Popularity, load_model
from privrec.models.file_layout import MAX_RATIO

BIG = 256 << 20  # bytes of zeros each bomb declares (more than the memory limit asserted below)
MAX_SECONDS = 1.0
MAX_PEAK = 32 << 20


def _header(descr: str, shape: tuple[int, ...]) -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _write_member(zf: zipfile.ZipFile, key: str, arr: np.ndarray | None, spec: Any) -> None:
    """One ``.npy`` member; ``spec = (descr, shape)`` with ``arr=None`` streams zeros."""
    with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
        if arr is not None:
            fh.write(_header(arr.dtype.str, arr.shape))
            fh.write(np.ascontiguousarray(arr).tobytes())
            return
        descr, shape = spec
        fh.write(_header(descr, shape))
        left = int(np.prod(shape, dtype=np.int64)) * np.dtype(descr).itemsize
        chunk = bytes(1 << 22)
        while left:
            n = min(left, len(chunk))
            fh.write(chunk[:n])
            left -= n


def craft(
    path: Path,
    model: str,
    params: dict[str, Any],
    arrays: dict[str, np.ndarray | tuple[str, tuple[int, ...]]],
    *,
    extra: dict[str, Any] | None = None,
    has_user_data: bool = False,
    meta_padding: int = 0,
) -> Path:
    """A model file whose metadata declares exactly the given arrays (real or zero-filled)."""
    declared = {
        k: (
            {"dtype": v.dtype.str, "shape": list(v.shape)}
            if isinstance(v, np.ndarray)
            else {"dtype": v[0], "shape": list(v[1])}
        )
        for k, v in arrays.items()
    }
    meta = {
        "format": "privrec-model",
        "format_version": 2,
        "model": model,
        "params": params,
        "extra": extra or {},
        "has_user_data": has_user_data,
        "arrays": declared,
    }
    text = json.dumps(meta).encode() + b" " * meta_padding
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        _write_member(zf, "__meta__", np.frombuffer(text, np.uint8), None)
        for key, value in arrays.items():
            if isinstance(value, np.ndarray):
                _write_member(zf, key, value, None)
            else:
                _write_member(zf, key, None, value)
    return path


@pytest.fixture(scope="module")
def dpals_meta(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = synthetic(n_users=200, n_items=40, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        model = DPALS(epsilon=2.0, delta=1e-6, unit="user", factors=4, seed=0).fit(data)
    path = model.save(tmp_path_factory.mktemp("m") / "dpals.npz")
    with zipfile.ZipFile(path) as zf:
        meta: dict[str, Any] = json.loads(np.load(zf.open("__meta__.npy")).tobytes())
        arrays = {k[:-4]: np.load(zf.open(k)) for k in zf.namelist() if k != "__meta__.npy"}
    return {"params": meta["params"], "extra": meta["extra"], "arrays": arrays}


def _refused_fast(path: Path, field: str) -> ModelFileError:
    """Load ``path``: a typed error naming the file and ``field``, fast and without the arrays."""
    assert path.stat().st_size < 2 << 20, "the crafted file must be small on disk"
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ModelFileError) as info:
            load_model(path)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    err = info.value
    assert err.file == str(path)
    assert err.field == field, str(err)
    assert seconds < MAX_SECONDS, f"took {seconds:.2f} s"
    assert peak < MAX_PEAK, f"allocated {peak / 2**20:.0f} MiB"
    return err


def _dpals_arrays(base: dict[str, Any], n_items: int | None = None) -> dict[str, Any]:
    arrays: dict[str, Any] = dict(base["arrays"])
    if n_items is not None:
        arrays["item_ids"] = ("<i8", (n_items,))
        arrays["state_item_factors"] = ("<f4", (n_items, 4))
        arrays["state_noisy_counts"] = ("<f4", (n_items,))
    return arrays


def test_giant_factors_stop_at_the_layout(dpals_meta: dict[str, Any], tmp_path: Path) -> None:
    # the right catalogue, but factors 2^24 wide where the parameters say 4
    arrays = _dpals_arrays(dpals_meta)
    arrays["state_item_factors"] = ("<f4", (40, BIG // 160))
    path = craft(
        tmp_path / "f.npz", "dpals", dpals_meta["params"], arrays, extra=dpals_meta["extra"]
    )
    err = _refused_fast(path, "state_item_factors")
    assert "parameters and catalogue" in err.message


def test_giant_head_stops_at_its_bound(dpals_meta: dict[str, Any], tmp_path: Path) -> None:
    arrays = _dpals_arrays(dpals_meta)
    arrays["state_head_items"] = ("<i8", (BIG // 8,))
    path = craft(
        tmp_path / "h.npz", "dpals", dpals_meta["params"], arrays, extra=dpals_meta["extra"]
    )
    _refused_fast(path, "state_head_items")


@pytest.fixture(scope="module")
def catalogue_bomb(dpals_meta: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    # every array consistent with a 2^24-item catalogue (factors 4 wide as the parameters say)
    return craft(
        tmp_path_factory.mktemp("bomb") / "c.npz",
        "dpals",
        dpals_meta["params"],
        _dpals_arrays(dpals_meta, n_items=BIG // 16),
        extra=dpals_meta["extra"],
    )


def test_giant_catalogue_of_zeros_stops_at_the_ratio(catalogue_bomb: Path) -> None:
    err = _refused_fast(catalogue_bomb, "item_ids")
    assert "decompression bomb" in err.message


def test_ease_weights_of_zeros_stop_at_the_ratio(tmp_path: Path) -> None:
    n = 8192  # 256 MiB of float32 weights over an honest catalogue
    arrays: dict[str, Any] = {
        "item_ids": np.random.default_rng(0).permutation(n).astype(np.int64),
        "state_weights": ("<f4", (n, n)),
    }
    params = EASE().config().model_dump(mode="json")
    _refused_fast(craft(tmp_path / "e.npz", "ease", params, arrays), "state_weights")


def test_dpease_weights_larger_than_the_catalogue(tmp_path: Path) -> None:
    arrays: dict[str, Any] = {
        "item_ids": np.arange(30, dtype=np.int64),
        "state_head_items": ("<i8", (8192,)),
        "state_weights": ("<f4", (8192, 8192)),
        "state_item_popularity": ("<f4", (8192,)),
        "state_noise_multiplier": np.asarray(1.0),
    }
    params = DPEASE(epsilon=1.0, delta=1e-6, unit="user").config().model_dump(mode="json")
    err = _refused_fast(craft(tmp_path / "d.npz", "dpease", params, arrays), "state_head_items")
    assert "'h'" in err.message


def _federated_arrays(n: int, k: int) -> dict[str, Any]:
    return {
        "item_ids": np.arange(n, dtype=np.int64),
        "state_item_factors": np.zeros((n, k), np.float32),
        "state_head_items": np.arange(n, dtype=np.int64),
        "state_popularity": np.zeros(n, np.float32),
        "state_noise_multiplier": np.asarray(1.0),
        "state_fold": np.asarray([2.0, 0.1]),
    }


def test_federated_mf_factors_wider_than_its_parameters(tmp_path: Path) -> None:
    from privrec.federated import FederatedMF

    params = FederatedMF(epsilon=1.0, factors=4).config().model_dump(mode="json")
    arrays = _federated_arrays(40, 4)
    arrays["state_item_factors"] = ("<f4", (40, BIG // 160))
    path = craft(tmp_path / "f.npz", "federated_mf", params, arrays)
    err = _refused_fast(path, "state_item_factors")
    assert "parameters and catalogue" in err.message


def test_federated_mf_head_larger_than_the_catalogue(tmp_path: Path) -> None:
    from privrec.federated import FederatedMF

    params = FederatedMF(epsilon=1.0, factors=4).config().model_dump(mode="json")
    arrays = _federated_arrays(30, 4)
    arrays["state_head_items"] = ("<i8", (BIG // 8,))
    err = _refused_fast(
        craft(tmp_path / "h.npz", "federated_mf", params, arrays), "state_head_items"
    )
    assert "'h'" in err.message


def test_federated_mf_file_round_trips_with_its_layout(tmp_path: Path) -> None:
    from privrec.federated import FederatedMF

    data = synthetic(n_users=200, n_items=30, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        model = FederatedMF(
            epsilon=5.0, factors=4, rounds=2, clients_per_round=100, head_items=10,
            aggregation="central", seed=0,
        ).fit(data)  # fmt: skip
    again = load_model(model.save(tmp_path / "fed.npz"))
    np.testing.assert_array_equal(again.head_items_, model.head_items_)  # type: ignore[attr-defined]
    assert again.popularity_shrinkage_ == model.popularity_shrinkage_  # type: ignore[attr-defined]
    history = data.matrix[:3]  # served from the users' own histories (released-only file)
    np.testing.assert_array_equal(
        again.recommend_history(history, k=5)[0], model.recommend_history(history, k=5)[0]
    )


def test_knn_with_more_neighbours_than_its_parameters(tmp_path: Path) -> None:
    n = 100
    arrays: dict[str, Any] = {
        "item_ids": np.arange(n, dtype=np.int64),
        "state_sim_indptr": np.zeros(n + 1, np.int64),
        "state_sim_indices": ("<i4", (BIG // 8,)),
        "state_sim_data": ("<f4", (BIG // 8,)),
    }
    params = ItemKNN(neighbours=5).config().model_dump(mode="json")
    _refused_fast(craft(tmp_path / "k.npz", "itemknn", params, arrays), "state_sim_indices")


def test_giant_user_arrays_stop_at_the_ratio(tmp_path: Path) -> None:
    # a non-private file with user data: 2^25 users of zeros, user arrays consistent
    u, n = BIG // 8, 10
    arrays: dict[str, Any] = {
        "item_ids": np.arange(n, dtype=np.int64),
        "user_ids": ("<i8", (u,)),
        "ui_data": np.zeros(0, np.float32),
        "ui_indices": np.zeros(0, np.int32),
        "ui_indptr": ("<i8", (u + 1,)),
        "ui_shape": np.array([u, n]),
        "state_item_popularity": np.zeros(n, np.float32),
    }
    params = Popularity().config().model_dump(mode="json")
    path = craft(tmp_path / "u.npz", "popularity", params, arrays, has_user_data=True)
    _refused_fast(path, "user_ids")


def test_user_arrays_that_disagree_stop_at_their_headers(tmp_path: Path) -> None:
    n = 10
    arrays: dict[str, Any] = {
        "item_ids": np.arange(n, dtype=np.int64),
        "user_ids": np.arange(3),
        "ui_data": ("<f4", (BIG // 4,)),  # all ones would be legitimate, but not this many
        "ui_indices": np.zeros(2, np.int32),
        "ui_indptr": np.array([0, 1, 2, 2]),
        "ui_shape": np.array([3, n]),
        "state_item_popularity": np.zeros(n, np.float32),
    }
    params = Popularity().config().model_dump(mode="json")
    path = craft(tmp_path / "v.npz", "popularity", params, arrays, has_user_data=True)
    _refused_fast(path, "ui_data")


def test_padded_metadata_stops_at_the_ratio(dpals_meta: dict[str, Any], tmp_path: Path) -> None:
    path = craft(
        tmp_path / "m.npz",
        "dpals",
        dpals_meta["params"],
        _dpals_arrays(dpals_meta),
        extra=dpals_meta["extra"],
        meta_padding=60 << 20,
    )
    _refused_fast(path, "__meta__")


def test_an_array_the_model_does_not_read_is_never_inflated(
    dpals_meta: dict[str, Any], tmp_path: Path
) -> None:
    arrays = {**_dpals_arrays(dpals_meta), "state_evil": ("<f4", (BIG // 4,))}
    path = craft(
        tmp_path / "x.npz", "dpals", dpals_meta["params"], arrays, extra=dpals_meta["extra"]
    )
    tracemalloc.start()
    try:
        model = load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert model.n_items_ == 40
    assert peak < MAX_PEAK


def test_ratio_limit_leaves_room_for_real_models(tmp_path: Path) -> None:
    """Real files stay far from the bound: every member of every built-in kind."""
    data = synthetic(n_users=300, n_items=120, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        models = [
            DPALS(epsilon=1.0, delta=1e-6, unit="user", seed=0),
            DPEASE(epsilon=1.0, delta=1e-6, unit="user", head_min=10, seed=0),
            EASE(),
            ItemKNN(neighbours=10),
            Popularity(),
        ]
        for i, model in enumerate(models):
            path = model.fit(data).save(tmp_path / f"{i}.npz")
            load_model(path)


def _members(path: Path) -> Iterator[zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as zf:
        yield from zf.infolist()


def test_catalogue_bomb_peak_rss_in_a_fresh_process(catalogue_bomb: Path) -> None:
    """The same catalogue bomb, measured as the OS sees it: peak RSS barely moves."""
    path = catalogue_bomb
    declared = sum(i.file_size for i in _members(path))
    assert declared > MAX_RATIO * path.stat().st_size
    code = f"""
import resource, time
from privrec.errors import ModelFileError
from privrec.models import load_model
import privrec.models.all  # imports and registry before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    load_model({str(path)!r})
except ModelFileError as exc:
    field = exc.field
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(field, grown, time.perf_counter() - t)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    field, grown_kib, seconds = out[0], int(out[1]), float(out[2])
    assert field == "item_ids"
    assert grown_kib < 32 << 10, f"peak RSS grew by {grown_kib / 1024:.0f} MiB"
    assert seconds < MAX_SECONDS


def test_text_catalogue_padded_to_a_long_id_still_loads(tmp_path: Path) -> None:
    """numpy pads text ids to the longest one: such a real catalogue compresses ~70:1."""
    rng = np.random.default_rng(0)
    n = 20_000
    ids = [f"https://shop.example/p/{x}" for x in rng.choice(10**7, n - 1, replace=False)]
    catalogue = np.array([*ids, "x" * 200])
    arrays: dict[str, Any] = {
        "item_ids": catalogue,
        "state_item_popularity": rng.random(n).astype(np.float32),
    }
    params = Popularity().config().model_dump(mode="json")
    path = craft(tmp_path / "t.npz", "popularity", params, arrays)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("item_ids.npy")
    assert info.file_size > MAX_RATIO * info.compress_size  # above the numeric bound
    assert load_model(path).n_items_ == n


def test_text_catalogue_of_nothing_stops_at_the_ratio(tmp_path: Path) -> None:
    arrays: dict[str, Any] = {
        "item_ids": ("<U64", (BIG // 256,)),
        "state_item_popularity": ("<f4", (BIG // 256,)),
    }
    params = Popularity().config().model_dump(mode="json")
    _refused_fast(craft(tmp_path / "z.npz", "popularity", params, arrays), "item_ids")
