"""The federated DPALS run record (``checkpoint-dir/dpals-run``) read as hostile input.

A review found two servers could share one record (each asking the devices for the same round:
two releases, one charge), that markers were written through planted links, and that tampered
files crashed with untyped errors or were decompressed whole before any check. Every case here
must be refused with :class:`~privrec.errors.ConfigError`, with nothing written.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from privrec.errors import ConfigError
from privrec.federated.dpals_devices import SumResult
from privrec.federated.flower.dpals_checkpoint import RoundStore

PARAMS = {"epsilon": 1.0, "population": 30}
DIM = 6


def _store(folder: Path, resume: bool = True) -> RoundStore:
    return RoundStore(folder, PARAMS, resume=resume)


def _planted(folder: Path) -> RoundStore:
    """A store whose journal exists (empty): round files planted beside it are then read."""
    store = _store(folder)
    (folder / "journal").touch()
    return store


def _recorded(folder: Path) -> RoundStore:
    store = _store(folder)
    store.record(1, "d" * 64, SumResult(np.arange(DIM, dtype=np.float64), 12))
    return store


def test_a_recorded_round_replays_and_the_lock_admits_one_server(tmp_path: Path) -> None:
    store = _recorded(tmp_path / "run")
    with pytest.raises(ConfigError, match="another server holds"):
        _store(tmp_path / "run")
    store.close()
    again = _store(tmp_path / "run")
    res = again.replay(1, "d" * 64, DIM)
    assert res is not None and res.survivors == 12
    np.testing.assert_array_equal(res.decoded, np.arange(DIM))
    assert again.replay(2, "e" * 64, DIM) is None
    with pytest.raises(ConfigError, match="another plan"):
        again.replay(1, "e" * 64, DIM)
    again.close()


@pytest.mark.parametrize(
    "text",
    [
        '{"fingerprint": "%s", "init_seed": Infinity}',
        '{"fingerprint": "%s", "init_seed": -7}',
        '{"fingerprint": "%s", "init_seed": 1.9}',
        '{"fingerprint": "%s", "init_seed": true}',
        '{"fingerprint": "%s", "init_seed": "12"}',
        '{"fingerprint": "%s", "init_seed": 1' + "0" * 4000 + "}",
        '{"fingerprint": "nothex", "init_seed": 1}',
        "[" * 200_000,
        "[1, 2]",
    ],
)
def test_a_tampered_run_record_is_refused(tmp_path: Path, text: str) -> None:
    folder = tmp_path / "run"
    store = _store(folder)
    fp = store.fingerprint
    store.close()
    (folder / "run.json").write_text(text.replace("%s", fp) if "%s" in text else text)
    with pytest.raises(ConfigError, match="not a federated DPALS run record"):
        _store(folder)


def test_a_run_folder_that_is_a_file_or_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"cannot be a run folder|not a folder"):
        _store(tmp_path / "file")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="not a folder"):
        _store(tmp_path / "link")


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as fh:
        np.savez_compressed(fh, **arrays)


def _good() -> dict[str, np.ndarray]:
    return {
        "digest": np.asarray("d" * 64),
        "decoded": np.zeros(DIM),
        "survivors": np.asarray(12),
    }


@pytest.mark.parametrize(
    "change",
    [
        {"decoded": np.zeros(DIM, dtype=np.complex128)},
        {"decoded": np.zeros(DIM + 1)},
        {"decoded": np.full(DIM, np.nan)},
        {"decoded": np.zeros((2, 3))},
        {"survivors": np.asarray(12.5)},
        {"survivors": np.asarray(-1)},
        {"survivors": np.asarray([36, 37])},
        {"digest": np.asarray(7)},
        {"extra": np.zeros(1)},
    ],
    ids=["complex", "long", "nan", "2d", "float-count", "negative", "vector", "digest", "extra"],
)
def test_a_tampered_round_file_is_refused(tmp_path: Path, change: dict[str, np.ndarray]) -> None:
    store = _planted(tmp_path / "run")
    _write_npz(tmp_path / "run" / "round-001.npz", **{**_good(), **change})
    with pytest.raises(ConfigError, match="not a recorded round"):
        store.replay(1, "d" * 64, DIM)
    store.close()


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04trunc", b"junk"], ids=["empty", "cut", "junk"]
)
def test_a_broken_round_file_is_refused(tmp_path: Path, content: bytes) -> None:
    store = _planted(tmp_path / "run")
    (tmp_path / "run" / "round-001.npz").write_bytes(content)
    with pytest.raises(ConfigError, match="not a recorded round"):
        store.replay(1, "d" * 64, DIM)
    store.close()


def test_a_compressed_bomb_is_refused_before_it_is_decompressed(tmp_path: Path) -> None:
    store = _planted(tmp_path / "run")
    path = tmp_path / "run" / "round-001.npz"
    _write_npz(path, **{**_good(), "decoded": np.zeros(5_000_000)})  # 40 MB, ~40 kB on disk
    assert path.stat().st_size < 200_000
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("decoded.npy").file_size > 8 * DIM + 1024
    with pytest.raises(ConfigError, match="larger than a recorded round"):
        store.replay(1, "d" * 64, DIM)
    store.close()


def test_planted_links_are_not_written_through(tmp_path: Path) -> None:
    store = _planted(tmp_path / "run")
    target = tmp_path / "outside"
    (tmp_path / "run" / "round-002.started").symlink_to(target)  # dangling
    with pytest.raises(ConfigError, match="second release"):
        store.replay(2, "d" * 64, DIM)
    with pytest.raises(ConfigError, match="already exists"):
        store.start(2)
    assert not target.exists()
    _write_npz(tmp_path / "elsewhere.npz", **_good())
    (tmp_path / "run" / "round-003.npz").symlink_to(tmp_path / "elsewhere.npz")
    with pytest.raises(ConfigError, match="not a recorded round"):
        store.replay(3, "d" * 64, DIM)
    store.close()


def test_nothing_is_written_by_a_refused_store(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    store = _store(folder)
    store.close()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    doc = json.loads((folder / "run.json").read_text())
    with pytest.raises(ConfigError, match="another federated DPALS run"):
        RoundStore(folder, {**PARAMS, "epsilon": 4.0}, resume=True)
    with pytest.raises(ConfigError, match="resume is off"):
        _store(folder, resume=False)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert json.loads((folder / "run.json").read_text()) == doc


def test_the_journal_catches_a_lost_last_round_and_a_replaced_lock(tmp_path: Path) -> None:
    """A second review: losing the *last* round file went unnoticed (the hole check needs a
    later file), and deleting ``.lock`` let a second server in. The journal remembers every
    recorded round; a store whose lock file was replaced stops before asking the devices."""
    folder = tmp_path / "run"
    store = _recorded(folder)
    assert (folder / "journal").read_text() == "record 1\n"
    store.close()
    (folder / "round-001.npz").unlink()
    store = _store(folder)
    with pytest.raises(ConfigError, match=r"was recorded and round-001\.npz is gone"):
        store.replay(1, "d" * 64, DIM)
    (folder / ".lock").unlink()
    (folder / ".lock").write_text("")
    with pytest.raises(ConfigError, match="removed or replaced"):
        store.start(2)
    assert not (folder / "round-002.started").exists()
    store.close()


def test_a_round_is_never_started_or_recorded_over_a_recorded_one(tmp_path: Path) -> None:
    store = _recorded(tmp_path / "run")
    with pytest.raises(ConfigError, match="already exists: another server recorded"):
        store.record(1, "d" * 64, SumResult(np.ones(DIM), 12))
    res = store.replay(1, "d" * 64, DIM)
    assert res is not None and float(res.decoded.sum()) == float(np.arange(DIM).sum())
    with pytest.raises(ConfigError, match="or a later one was recorded"):
        store.start(1)
    store.close()


def test_a_started_round_in_the_journal_is_refused_without_its_marker(tmp_path: Path) -> None:
    store = _store(tmp_path / "run")
    store.start(1)
    (tmp_path / "run" / "round-001.started").unlink()  # a marker lost: the journal remembers
    with pytest.raises(ConfigError, match="second release"):
        store.replay(1, "d" * 64, DIM)
    store.aborted(1)  # a crafted line: an abort never undoes a start
    with pytest.raises(ConfigError, match="second release"):
        store.replay(1, "d" * 64, DIM)
    store.aborted(2)  # an abort before the unmask request (no start): free
    assert store.replay(2, "d" * 64, DIM) is None
    store.close()


def test_a_torn_last_journal_line_was_never_acted_on(tmp_path: Path) -> None:
    store = _recorded(tmp_path / "run")
    with (tmp_path / "run" / "journal").open("a") as fh:
        fh.write("sta")  # a write cut short (full disk): the start it began never happened
    assert store.replay(2, "d" * 64, DIM) is None
    store.close()


@pytest.mark.parametrize("text", ["start x\n", "record 1 2\n", "\x00" * 8 + "\n", "started 1\n"])
def test_a_tampered_journal_is_refused(tmp_path: Path, text: str) -> None:
    store = _store(tmp_path / "run")
    (tmp_path / "run" / "journal").write_text(text)
    with pytest.raises(ConfigError, match="not a round journal"):
        store.replay(1, "d" * 64, DIM)
    store.close()


def test_a_new_run_folder_is_made_durable_with_its_parents(tmp_path: Path) -> None:
    from privrec.federated.flower.run_lock import make_durable_dir

    deep = tmp_path / "a" / "b" / "c"
    make_durable_dir(deep)
    assert deep.is_dir()
    make_durable_dir(deep)  # existing: nothing to do
    store = _store(tmp_path / "x" / "y" / "run")
    assert (tmp_path / "x" / "y" / "run" / "run.json").exists()
    store.close()
