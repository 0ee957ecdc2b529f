"""The user-sharded Parquet layout: round trip, streaming writer, one pass catalogue, hostile dirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from privrec.data import Interactions
from privrec.engine import ParquetSource, user_shard, write_user_shards
from privrec.errors import DataError


def test_round_trip_keeps_every_interaction(small_data, shards: Path) -> None:  # type: ignore[no-untyped-def]
    src = ParquetSource.open(shards)
    assert src.n_shards == 5 and set(src.columns) == {"user", "item", "timestamp"}
    back = src.to_interactions()
    assert np.array_equal(back.item_ids, small_data.item_ids)
    assert np.array_equal(back.user_ids, small_data.user_ids)
    assert (back.matrix != small_data.matrix).nnz == 0
    assert np.array_equal(back.timestamps, small_data.timestamps)


def test_every_user_lives_in_the_file_of_their_hash(shards: Path) -> None:
    src = ParquetSource.open(shards)
    seen: set[object] = set()
    for shard, f in src.shard_files():
        users = pq.read_table(f, columns=["user"]).column("user").to_numpy()
        assert np.all(user_shard(users, src.n_shards) == shard)
        assert not seen & set(users.tolist())  # no user in two files
        seen |= set(users.tolist())


def test_shards_are_dealt_to_workers_without_overlap(shards: Path) -> None:
    src = ParquetSource.open(shards)
    parts = src.assign(2)
    flat = [s for p in parts for s, _ in p]
    assert sorted(flat) == [s for s, _ in src.shard_files()]


def test_streaming_writer_from_a_parquet_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    users = np.array([f"u{i}" for i in rng.integers(0, 50, 600)])
    items = rng.integers(0, 30, 600)
    weights = rng.random(600).astype(np.float32) + 0.5
    pq.write_table(pa.table({"uid": users, "iid": items, "w": weights}), tmp_path / "raw.parquet")
    src = write_user_shards(
        tmp_path / "raw.parquet", tmp_path / "out", 3, user_col="uid", item_col="iid",
        weight_col="w", batch_rows=97,
    )  # fmt: skip
    with pytest.warns(Warning):  # duplicate pairs are summed, as the loaders do, with a warning
        want = Interactions.from_arrays(users, items, weights)
    with pytest.warns(Warning):
        got = src.to_interactions()
    assert np.array_equal(got.user_ids, want.user_ids)
    assert np.allclose(got.matrix.toarray(), want.matrix.toarray())
    assert np.array_equal(src.item_catalogue(), np.arange(30))


def test_given_catalogue_must_cover_the_items(shards: Path) -> None:
    src = ParquetSource.open(shards)
    with pytest.raises(DataError, match="outside the given index space"):
        src.to_interactions(item_ids=src.item_catalogue()[:-3])


def test_a_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"user": [1], "item": [2]}), tmp_path / "part-00000.parquet")
    with pytest.raises(DataError, match="no shard manifest"):
        ParquetSource.open(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        ParquetSource.open(tmp_path / "part-00000.parquet")


@pytest.mark.parametrize(
    "meta",
    [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"format": "privrec-user-shards", "hash": "pandas-hash_array", "n_shards": 0,
                    "columns": ["user", "item"]}),
        json.dumps({"format": "privrec-user-shards", "hash": "pandas-hash_array", "n_shards": 2,
                    "columns": ["user", "rating"]}),
        json.dumps({"format": "other", "hash": "pandas-hash_array", "n_shards": 2,
                    "columns": ["user", "item"]}),
    ],
)  # fmt: skip
def test_hostile_manifests_are_data_errors(tmp_path: Path, meta: str) -> None:
    (tmp_path / "_privrec_shards.json").write_text(meta)
    with pytest.raises(DataError):
        ParquetSource.open(tmp_path)


def test_a_user_in_the_wrong_file_is_refused(shards: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    src = ParquetSource.open(bad)
    (s0, f0), (_, f1) = src.shard_files()[:2]
    t0, t1 = pq.read_table(f0), pq.read_table(f1)
    pq.write_table(pa.concat_tables([t0, t1.slice(0, 1)]), f0)  # one of shard 1's users in 0
    with pytest.raises(DataError, match="wrong shard") as err:
        src.read_shards([(s0, f0)], src.item_catalogue())
    # no raw user id in the message (it was "found np.int64(…)"): the file and a count instead
    n_users = len(set(t0.column("user").to_pylist())) + 1
    assert err.value.found == f"1 of its {n_users} users belong to other shards"
    assert err.value.file == str(f0) and "np.int64" not in str(err.value)


def test_one_user_id_in_two_integer_widths_is_one_shard_and_refused_mixed(
    shards: Path, tmp_path: Path
) -> None:
    """-7 stored as int32 in one file and int64 in another hashed to different shards: the same
    person could sit in two files and count twice. The hash now sees one canonical integer, and
    shard files whose user column types differ are refused."""
    import shutil

    for v in (-7, 3, 2**40):
        wide = user_shard(np.asarray([v], dtype=np.int64), 8)
        if abs(v) < 2**31:
            assert user_shard(np.asarray([v], dtype=np.int32), 8) == wide
            assert user_shard(np.asarray([v], dtype=np.int16), 8) == wide
    bad = tmp_path / "mixed"
    shutil.copytree(shards, bad)
    src = ParquetSource.open(bad)
    (s0, f0), (s1, f1) = src.shard_files()[:2]
    t0 = pq.read_table(f0)
    assert pa.types.is_integer(t0.schema.field("user").type)
    narrow = t0.set_column(
        t0.schema.get_field_index("user"), "user", t0.column("user").cast(pa.int32())
    )
    pq.write_table(narrow, f0)
    with pytest.raises(DataError, match="user id type differs"):
        src.read_shards([(s0, f0), (s1, f1)], src.item_catalogue())


def test_writer_refuses_a_non_empty_directory(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        write_user_shards(small_data, tmp_path, 2)
    assert (tmp_path / "x").read_text() == "keep me"
