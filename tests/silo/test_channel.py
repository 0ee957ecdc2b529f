"""The authenticated channel: tampered, replayed, reordered, misaddressed and
man-in-the-middle frames are rejected; silence and closed peers are typed errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from privrec.errors import MessageRejected, PeerUnavailable
from privrec.secure.channel import Channel, Identity, Listener, Roster, connect, free_ports
from privrec.secure.silo import setup_keys


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Channel, Channel]]:
    """``(silo1 → server0, server0's end)`` over loopback."""
    roster, ids = setup_keys(tmp_path, 1)
    listener = Listener(ids["server0"], roster, timeout=5)
    got: list[Channel] = []
    th = threading.Thread(target=lambda: got.append(listener.accept()))
    th.start()
    client = connect(ids["silo1"], roster, "server0", timeout=5)
    th.join(5)
    server = got[0]
    try:
        yield client, server
    finally:
        client.close()
        server.close()
        listener.close()


def test_round_trip_and_keys_from_files(pair: tuple[Channel, Channel], tmp_path: Path) -> None:
    client, server = pair
    client.send(3, 2, b"hello")
    assert server.recv(3, 2) == b"hello"
    server.send(3, 4, b"x" * 100_000)
    assert client.recv(3, 4) == b"x" * 100_000
    roster = Roster.load(tmp_path / "roster.json")
    ident = Identity.load(tmp_path / "silo1.key")
    assert roster["silo1"].public_key == ident.public_key
    assert (tmp_path / "silo1.key").stat().st_mode & 0o077 == 0


def test_replayed_frame_is_rejected(pair: tuple[Channel, Channel]) -> None:
    client, server = pair
    frame = client.seal(1, 2, b"share")
    client.send_raw(frame)
    assert server.recv(1, 2) == b"share"
    client.send_raw(frame)
    with pytest.raises(MessageRejected, match="replayed"):
        server.recv(1, 2)


@pytest.mark.parametrize("where", [-1, 20, 5])  # ciphertext, body start, step field
def test_tampered_frame_is_rejected(pair: tuple[Channel, Channel], where: int) -> None:
    client, server = pair
    frame = bytearray(client.seal(1, 2, b"share" * 10))
    frame[where] ^= 0x01
    client.send_raw(bytes(frame))
    with pytest.raises(MessageRejected):
        server.recv(1, 2)


def test_reordered_frame_is_rejected_and_the_stream_stays_dead(
    pair: tuple[Channel, Channel],
) -> None:
    client, server = pair
    client.seal(1, 2, b"a")  # sealed but never delivered (dropped by the network)
    client.send(2, 2, b"b")
    with pytest.raises(MessageRejected):
        server.recv_any()
    client.send(3, 2, b"c")  # the counters no longer agree: nothing is accepted any more
    with pytest.raises(MessageRejected):
        server.recv(3, 2)


def test_wrong_step_is_rejected(pair: tuple[Channel, Channel]) -> None:
    client, server = pair
    client.send(4, 2, b"late")
    with pytest.raises(MessageRejected, match="step 5"):
        server.recv(5, 2)


def test_man_in_the_middle_is_detected(tmp_path: Path) -> None:
    roster, ids = setup_keys(tmp_path, 1)
    _, impostor_ids = setup_keys(tmp_path / "other", 1)  # same names, other keys
    listener = Listener(ids["server0"], roster, timeout=5)
    errors: list[BaseException] = []

    def accept() -> None:
        try:
            listener.accept()
        except BaseException as exc:
            errors.append(exc)

    th = threading.Thread(target=accept)
    th.start()
    try:
        with pytest.raises(MessageRejected, match="handshake"):
            connect(impostor_ids["silo1"], roster, "server0", timeout=5)
    finally:
        th.join(5)
        listener.close()
    assert errors and isinstance(errors[0], MessageRejected)


def test_silence_and_closed_peer(pair: tuple[Channel, Channel]) -> None:
    client, server = pair
    with pytest.raises(PeerUnavailable, match="timeout"):
        server.recv_any(timeout=0.2)
    client.close()
    with pytest.raises(PeerUnavailable):
        server.recv_any(timeout=2)


def test_unreachable_peer(tmp_path: Path) -> None:
    roster, ids = setup_keys(tmp_path, 1)
    with pytest.raises(PeerUnavailable, match="cannot reach"):
        connect(ids["silo1"], roster, "server1", timeout=1, retry_for=0.3)


def test_cli_keys_writes_roster_and_private_keys(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from privrec.cli.main import app

    res = CliRunner().invoke(
        app, ["silo", "keys", str(tmp_path), "--silos", "2", "--ports", "7301,7302,7303"]
    )
    assert res.exit_code == 0, res.output
    roster = Roster.load(tmp_path / "roster.json")
    assert roster.names("silo") == ["silo1", "silo2"]
    assert roster["server1"].port == 7303
    assert Identity.load(tmp_path / "driver.key").public_key == roster["driver"].public_key


def test_arrays_travel_in_chunks_and_a_swapped_chunk_is_rejected(
    pair: tuple[Channel, Channel],
) -> None:
    """A 9 MiB array goes as 3 frames straight into the receiver's array; chunks are bound to
    their position (the nonce counter), so delivering them out of order fails."""
    import numpy as np

    from privrec.secure.channel import CHUNK
    from privrec.secure.silo_roles import _recv_array
    from privrec.secure.silo_wire import SHARE

    client, server = pair
    data = np.arange(9 * (1 << 20) // 8, dtype=np.uint64)
    out = np.empty_like(data)
    before = client.bytes_sent
    sender = threading.Thread(target=client.send_array, args=(4, SHARE, data))
    sender.start()
    wall, cpu = _recv_array(server, 4, SHARE, out, 5.0)
    sender.join(5)
    assert np.array_equal(out, data) and wall >= 0 and cpu >= 0
    assert client.bytes_sent - before == data.nbytes + 3 * (13 + 16) and data.nbytes > 2 * CHUNK
    # the same three chunks, sealed for step 5, delivered 2nd before 1st
    small = data[: (2 * CHUNK) // 8]
    frames: list[bytes] = []
    client.sock, real = _Capture(frames), client.sock  # type: ignore[assignment]
    client.send_array(5, SHARE, small)
    client.sock = real

    def replay() -> None:
        try:
            client.send_raw(frames[1])
            client.send_raw(frames[0])
        except PeerUnavailable:  # the receiver hangs up after rejecting the first chunk
            pass

    sender = threading.Thread(target=replay, daemon=True)  # the socket buffer may be smaller
    sender.start()
    with pytest.raises(MessageRejected, match="failed authentication"):
        _recv_array(server, 5, SHARE, np.empty_like(small), 5.0)


class _Capture:
    """A socket stand-in that records what is sent."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames

    def sendall(self, data: memoryview) -> None:
        self.frames.append(bytes(data))


def test_picked_listening_ports_are_distinct(tmp_path: Path) -> None:
    """Ports are picked while all are held open, so one call never returns a port twice (three
    sequential single picks could, and the roster refused it: a CI flake)."""
    for _ in range(20):
        ports = free_ports(12)
        assert len(set(ports)) == 12
    roster, _ = setup_keys(tmp_path, 2)
    listening = [p.port for p in roster.parties.values() if p.port]
    assert len(set(listening)) == len(listening) == 3
