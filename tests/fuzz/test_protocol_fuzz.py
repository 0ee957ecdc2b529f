"""Fuzzing the protocol decoders: SecAgg+ messages, SecAgg+ client states, silo payloads and
the silo channel's frames and handshake.

Every try is classified: **ok** (accepted), **typed** (refused with a privrec error), **crash**
(any other exception) or **wrong** (accepted, but not what the bytes say: a decoded message
whose canonical encoding differs from the input, a restored state that exports different bytes,
a payload whose arrays do not match its header). Valid inputs must round-trip exactly. The
budget is bounded (``PRIVREC_FUZZ_EXAMPLES`` per target, default 250, derandomised so the suite
is reproducible; raise it for a longer local run) and the last test prints the table and fails
on any crash or wrong result.
"""

from __future__ import annotations

import os
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privrec.errors import PrivrecError
from privrec.secure import RoundConfig, SecAggClient, SecAggServer, generate_identities
from privrec.secure.channel import Channel, Identity, Listener
from privrec.secure.messages import _CLASSES, Message, decode
from privrec.secure.silo_wire import _pack, _unpack

EXAMPLES = int(os.environ.get("PRIVREC_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
COUNTS: dict[str, Counter[str]] = {}


def _record(target: str, outcome: str, detail: str = "") -> None:
    c = COUNTS.setdefault(target, Counter())
    c["tries"] += 1
    c[outcome] += 1
    if outcome in ("crash", "wrong"):
        raise AssertionError(f"{target}: {outcome}: {detail}")


def _classify(target: str, fn: Callable[[], Any], check: Callable[[Any], str | None]) -> None:
    """Run ``fn``; a privrec error is typed, another exception a crash; ``check`` says wrong."""
    try:
        value = fn()
    except PrivrecError:
        _record(target, "typed")
        return
    except Exception as exc:  # anything untyped is a finding
        _record(target, "crash", f"{type(exc).__name__}: {exc}")
        return
    problem = check(value)
    _record(target, "wrong" if problem else "ok", problem or "")


# ------------------------------------------------------------------------- mutations
@st.composite
def _mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "replace", "random"]))
    data = bytearray(valid)
    if kind == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=32))
    elif kind == "splice" and data:
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "replace" and data:
        pos = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=8))
        data[pos : pos + len(chunk)] = chunk
    else:
        data = bytearray(draw(st.binary(max_size=200)))
    return bytes(data)


# ------------------------------------------------------------------------- SecAgg+ messages
_U64 = st.integers(0, 2**64 - 1)


def _message_strategy(cls: type[Message], depth: int = 0) -> st.SearchStrategy[Message]:
    args: dict[str, st.SearchStrategy[Any]] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        kind = cls.KINDS[f.name]
        if kind == "int":
            args[f.name] = _U64
        elif kind == "bytes":
            args[f.name] = st.binary(max_size=48)
        elif kind == "ids":
            args[f.name] = st.lists(_U64, max_size=6).map(tuple)
        else:
            inner = next(c for c in _CLASSES if c.__name__ == kind)
            args[f.name] = st.lists(_message_strategy(inner, depth + 1), max_size=3).map(tuple)
    return st.builds(cls, **args)


MESSAGES = st.one_of(*[_message_strategy(c) for c in _CLASSES])


@FUZZ
@given(MESSAGES)
def test_valid_secagg_messages_round_trip(msg: Message) -> None:
    raw = msg.to_bytes()
    _classify(
        "secagg message (valid)",
        lambda: decode(raw),
        lambda out: None if out == msg and out.to_bytes() == raw else "changed in transit",
    )


@FUZZ
@given(st.data())
def test_mutated_secagg_messages_are_refused_or_decoded_exactly(data: st.DataObject) -> None:
    raw = data.draw(_mutated(data.draw(MESSAGES).to_bytes()))
    _classify(
        "secagg message (mutated)",
        lambda: decode(raw),
        lambda out: None if out.to_bytes() == raw else "accepted bytes it does not encode",
    )


# ------------------------------------------------------------------------- client states
def _states() -> tuple[
    dict[str, RoundConfig], list[tuple[str, bytes, bytes | None]], dict[str, Any]
]:
    """Exported states of client 1 at every step, plain and sealed, both threat models."""
    key = bytes(range(32))
    out: list[tuple[str, bytes, bytes | None]] = []
    configs: dict[str, RoundConfig] = {}
    identity: dict[str, Any] = {}
    for threat in ("honest-but-curious", "malicious"):
        ids, public = generate_identities(range(5)) if threat == "malicious" else ({}, {})
        identity[threat] = ids.get(1)
        cfg = RoundConfig.create(
            5,
            3,
            16,
            neighbours=4,
            threshold=3,
            threat_model=threat,
            identity_keys=public,  # type: ignore[arg-type]
        )
        configs[threat] = cfg
        clients = {u: SecAggClient(cfg, u, identity_key=ids.get(u)) for u in range(5)}
        server = SecAggServer(cfg)

        def snap(threat: str = threat, clients: dict[int, SecAggClient] = clients) -> None:
            out.append((threat, clients[1].export_state(), None))
            out.append((threat, clients[1].export_state(key=key), key))

        snap()
        dirs = server.advertise_keys([c.advertise_keys() for c in clients.values()])
        snap()
        dels = server.share_keys([clients[u].share_keys(d) for u, d in dirs.items()])
        snap()
        masked = [clients[u].masked_input(d, np.ones(3, np.uint16)) for u, d in dels.items()]
        snap()
        if cfg.malicious:
            checks = server.masked_input_consistency(masked)
            sigs = [clients[u].consistency_check(c) for u, c in checks.items()]
            snap()
            reqs = server.consistency_check(sigs)
        else:
            reqs = server.masked_input(masked)
        clients[1].unmask(reqs[1])
        snap()
    return configs, out, identity


CONFIGS, STATES, IDENTITY = _states()


def _restore(threat: str, raw: bytes, key: bytes | None) -> SecAggClient:
    # the long-term identity key (malicious rounds) is never part of the state: passed again
    return SecAggClient.restore_state(raw, CONFIGS[threat], key=key, identity_key=IDENTITY[threat])


@FUZZ
@given(st.sampled_from(range(len(STATES))), st.data())
def test_mutated_client_states_are_refused_or_restored_exactly(i: int, data: st.DataObject) -> None:
    threat, valid, key = STATES[i]
    raw = data.draw(_mutated(valid))

    def check(client: SecAggClient) -> str | None:
        if key is None and client.export_state() != raw:
            return "restored a state that exports other bytes"
        return None

    _classify("client state (mutated)", lambda: _restore(threat, raw, key), check)


def test_valid_client_states_round_trip() -> None:
    for threat, raw, key in STATES:
        _classify(
            "client state (valid)",
            lambda raw=raw, key=key, threat=threat: _restore(threat, raw, key),  # type: ignore[misc]
            lambda c, raw=raw, key=key: (
                None  # type: ignore[misc]
                if key is not None or c.export_state() == raw
                else "round trip changed the state"
            ),
        )


# ------------------------------------------------------------------------- silo payloads
_META = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=8)),
    max_size=4,
)
_ARRAYS = st.dictionaries(
    st.text(min_size=1, max_size=6),
    st.tuples(st.sampled_from(["<f8", "<f4", "<i8", "<i4", "<u8"]), st.integers(0, 6)).map(
        lambda t: np.arange(t[1], dtype=np.dtype(t[0]))
    ),
    max_size=3,
)


def _payload_ok(value: tuple[dict[str, Any], dict[str, np.ndarray]], raw: bytes) -> str | None:
    _, arrays = value
    (n,) = struct.unpack("<I", raw[:4])
    body = len(raw) - 4 - n
    for a in arrays.values():
        if a.nbytes > body:
            return "an array larger than the payload"
    return None


@FUZZ
@given(_META, _ARRAYS)
def test_valid_silo_payloads_round_trip(
    meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> None:
    raw = _pack(meta, arrays)

    def check(value: tuple[dict[str, Any], dict[str, np.ndarray]]) -> str | None:
        m, a = value
        if m != meta or set(a) != set(arrays):
            return "round trip changed the payload"
        if any(not np.array_equal(a[k], arrays[k]) or a[k].dtype != arrays[k].dtype for k in a):
            return "round trip changed an array"
        return None

    _classify("silo payload (valid)", lambda: _unpack(raw), check)


@FUZZ
@given(_META, _ARRAYS, st.data())
def test_mutated_silo_payloads_are_refused_or_consistent(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], data: st.DataObject
) -> None:
    raw = data.draw(_mutated(_pack(meta, arrays)))
    _classify("silo payload (mutated)", lambda: _unpack(raw), lambda v: _payload_ok(v, raw))


@FUZZ
@given(st.one_of(st.binary(max_size=64), st.sampled_from([b"\x05\x00\x00\x00" + b"[" * 5000])))
def test_arbitrary_silo_payloads(raw: bytes) -> None:
    nested = struct.pack("<I", 20000) + b"[" * 20000  # deeply nested JSON header
    for blob in (raw, nested):
        _classify("silo payload (arbitrary)", lambda blob=blob: _unpack(blob), lambda v: None)  # type: ignore[misc]


# ------------------------------------------------------------------------- channel frames
def _pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    k1, k2, session = os.urandom(32), os.urandom(32), os.urandom(16)
    return (
        Channel(a, "silo1", "server0", k1, k2, session, timeout=0.5),
        Channel(b, "server0", "silo1", k2, k1, session, timeout=0.5),
    )


@FUZZ
@given(st.integers(0, 2**40), st.integers(0, 255), st.binary(max_size=300), st.data())
def test_channel_frames_round_trip_or_are_refused(
    step: int, kind: int, payload: bytes, data: st.DataObject
) -> None:
    sender, receiver = _pair()
    try:
        frame = sender.seal(step, kind, payload)
        sender.send_raw(frame)
        _classify(
            "channel frame (valid)",
            lambda: receiver.recv_any(),
            lambda got: None if got == (step, kind, payload) else "frame changed in transit",
        )
        second = sender.seal(step, kind, payload)
        bad = data.draw(_mutated(second))
        sender.send_raw(bad)
        sender.sock.shutdown(socket.SHUT_WR)  # a truncated frame ends in EOF, not a wait
        # Only the intact frame may be accepted (bytes after it belong to the next frame).
        _classify(
            "channel frame (mutated)",
            lambda: receiver.recv_any(),
            lambda got: None if bad.startswith(second) else "accepted a changed frame",
        )
    finally:
        sender.close()
        receiver.close()


def test_a_huge_claimed_frame_length_costs_no_memory_up_front() -> None:
    """The length field is read before authentication: the buffer must follow the bytes."""
    from privrec.errors import PeerUnavailable
    from privrec.secure.channel import MAX_FRAME

    sender, receiver = _pair()
    try:
        sender.sock.sendall(struct.pack("<I", MAX_FRAME) + b"x" * 100)
        sender.sock.shutdown(socket.SHUT_WR)
        with pytest.raises(PeerUnavailable):
            receiver.recv_any()
        assert len(receiver._in) < 2 * (1 << 22) + 1024  # one chunk's worth, not 2 GiB
    finally:
        sender.close()
        receiver.close()


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from privrec.secure.silo import setup_keys

    roster, ids = setup_keys(tmp_path_factory.mktemp("keys"), 1)
    lst = Listener(ids["server0"], roster, timeout=0.5)
    yield lst, roster, ids
    lst.close()


@settings(FUZZ, max_examples=max(20, EXAMPLES // 5))
@given(st.binary(max_size=120))
def test_garbage_handshakes_are_refused(listener: Any, garbage: bytes) -> None:
    lst, roster, ids = listener
    info = roster["server0"]
    with socket.create_connection((info.host, info.port), timeout=2) as s:
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        _classify("channel handshake (garbage)", lambda: lst.accept(0.5), lambda ch: "accepted")
    assert isinstance(ids["silo1"], Identity)


# ------------------------------------------------------------------------- summary
def test_zz_summary() -> None:
    """The table of the run (printed with -s); any crash or wrong result fails."""
    lines = [f"{'target':32} {'tries':>6} {'ok':>6} {'typed':>6} {'crash':>6} {'wrong':>6}"]
    total: Counter[str] = Counter()
    for target, c in sorted(COUNTS.items()):
        total.update(c)
        lines.append(
            f"{target:32} {c['tries']:6d} {c['ok']:6d} {c['typed']:6d} {c['crash']:6d} {c['wrong']:6d}"
        )
    lines.append(
        f"{'total':32} {total['tries']:6d} {total['ok']:6d} {total['typed']:6d} "
        f"{total['crash']:6d} {total['wrong']:6d}"
    )
    print("\n" + "\n".join(lines))
    assert total["crash"] == 0 and total["wrong"] == 0
