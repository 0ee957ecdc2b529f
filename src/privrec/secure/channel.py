"""A minimal authenticated, encrypted channel over TCP for the cross-silo protocol.

Why not TLS: every party already has a static X25519 key pair created at set-up and a roster
(``roster.json``) with everybody's public key, so a certificate authority adds nothing; a
small Noise-like handshake over the ``cryptography`` primitives SecAgg already uses is enough
and keeps the protocol binding (session, step, sender, receiver, message type) explicit.

Handshake (initiator ``I`` connects to responder ``R``)
    ``I → R``: magic, ``I``'s name, ``R``'s name, a fresh ephemeral X25519 public key ``E_I``.
    ``R → I``: magic, ``R``'s name, a fresh ephemeral key ``E_R``. Both compute
    ``HKDF-SHA256(DH(s_I, S_R) ‖ DH(e_I, E_R))`` with the SHA-256 of the transcript as salt:
    the static–static term authenticates (only holders of the roster keys can compute it, so
    a man in the middle cannot), the ephemeral–ephemeral term makes every connection's keys
    fresh (frames of an old session are useless in a new one). 64 bytes come out: one
    AES-256-GCM key per direction. Each side then sends an encrypted confirmation frame; a
    wrong key shows up there as :class:`~privrec.errors.MessageRejected`.

Frames
    ``u32 length ‖ u64 step ‖ u8 type ‖ AES-GCM ciphertext``. Large arrays travel as a run of
    frames of at most :data:`CHUNK` plaintext bytes (:meth:`Channel.send_array`), each sealed
    into a reused buffer and opened straight into the receiver's array
    (:meth:`Channel.recv_frame` + :meth:`Channel.open_frame`): no staging copies, bounded
    buffers, and the receiver authenticates chunk *i* while chunk *i + 1* is on the wire. The nonce is a per-direction
    counter (never sent: the receiver knows which frame it expects), and the associated data
    binds the session id (transcript hash), step, sender, receiver, type and counter. A
    tampered byte, a replayed or reordered frame, or a frame re-addressed to another party
    fails authentication and raises :class:`~privrec.errors.MessageRejected`. Every read has
    a timeout; silence, a closed socket or a refused connection raise
    :class:`~privrec.errors.PeerUnavailable`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privrec.errors import ConfigError, KeyFileError, MessageRejected, PeerUnavailable
from privrec.keyfiles import read_secret, write_secret

__all__ = [
    "CHUNK",
    "MAX_FRAME",
    "Channel",
    "Identity",
    "Listener",
    "PartyInfo",
    "Roster",
    "check_port",
    "connect",
    "free_ports",
    "generate_keys",
]

MAGIC = b"PRSC1"
#: Largest accepted frame (bytes): bigger lengths are rejected before any allocation.
MAX_FRAME = 1 << 31
#: Plaintext bytes per frame when an array is sent in chunks (4 MiB).
CHUNK = 1 << 22
_TAG = 16
_GROW = CHUNK + 64  # first receive-buffer size: one array chunk frame
_HEAD = struct.Struct("<IQB")  # length of the rest, step, type
_CONFIRM = 255
_INFO = b"privrec/silo-channel/v1"


def _raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class PartyInfo:
    """One roster entry: role, static public key and (for listening roles) the address."""

    name: str
    role: str
    public_key: bytes
    host: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True)
class Roster:
    """Every party's public information, agreed at set-up (``roster.json``)."""

    parties: dict[str, PartyInfo]

    def names(self, role: str) -> list[str]:
        """Names of the parties with ``role``, sorted (the protocol's fixed order)."""
        return sorted(n for n, p in self.parties.items() if p.role == role)

    def __getitem__(self, name: str) -> PartyInfo:
        try:
            return self.parties[name]
        except KeyError:
            raise MessageRejected(f"party {name!r} is not in the roster") from None

    def to_json(self) -> str:
        return json.dumps(
            {
                n: {
                    "role": p.role,
                    "public_key": p.public_key.hex(),
                    "host": p.host,
                    "port": p.port,
                }
                for n, p in sorted(self.parties.items())
            },
            indent=2,
        )

    @classmethod
    def load(cls, path: str | Path) -> Roster:
        """Read ``roster.json``; anything malformed is a :class:`ConfigError` naming the file."""
        p = Path(path)
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"roster {str(p)!r} not found") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"roster {str(p)!r} is not readable JSON: {exc}") from None
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"roster {str(p)!r} must map party names to their entries")
        parties = {}
        for name, d in raw.items():
            try:
                key = bytes.fromhex(d["public_key"])
                role, host, port = str(d["role"]), str(d.get("host", "127.0.0.1")), d["port"]
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(
                    f"roster {str(p)!r}: entry {name!r} is malformed ({exc})"
                ) from None
            if len(key) != 32:
                raise ConfigError(f"roster: public key of {name!r} is not 32 bytes")
            _name_bytes(str(name))
            check_port(port, f"roster entry {name!r}", allow_zero=True)
            parties[str(name)] = PartyInfo(str(name), role, key, host, int(port))
        return cls(parties)


@dataclass(frozen=True)
class Identity:
    """A party's name and static private key (``<name>.key``, readable by its owner only)."""

    name: str
    key: X25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return _raw(self.key)

    @classmethod
    def load(cls, path: str | Path) -> Identity:
        """Read a ``<name>.key`` file (refused when other users may read it: mode 0600)."""
        raw = read_secret(path)
        try:
            d = json.loads(raw.decode("utf-8"))
            return cls(
                str(d["name"]), X25519PrivateKey.from_private_bytes(bytes.fromhex(d["private_key"]))
            )
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"key file {str(path)!r} is malformed: {exc}") from None


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` right now (the OS picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def check_port(port: object, what: str, *, allow_zero: bool = False) -> int:
    """A TCP port in 1..65535 (0 = "does not listen" where allowed), else :class:`ConfigError`."""
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise ConfigError(f"{what}: port must be an integer in {low}..65535, found {port!r}")
    return port


def generate_keys(
    directory: str | Path, parties: dict[str, tuple[str, str, int]]
) -> tuple[Roster, dict[str, Identity]]:
    """Create static keys for ``parties`` (name → (role, host, port)) and write the set-up files.

    Writes ``roster.json`` (public: give it to every party) and one ``<name>.key`` per party
    (secret: give it to that party only; mode 0600 even when the file existed before, see
    :func:`privrec.keyfiles.write_secret`). Names, hosts and ports are checked before
    anything is written.
    """
    for name, (_, host, port) in parties.items():
        _name_bytes(name)
        if not host:
            raise ConfigError(f"party {name!r}: empty host")
        check_port(port, f"party {name!r}", allow_zero=True)
    listening = [port for _, _, port in parties.values() if port]
    if len(set(listening)) != len(listening):
        raise ConfigError(f"two parties listen on the same port: {sorted(listening)}")
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create key directory {str(out)!r}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"key directory {str(out)!r} is not writable")
    ids: dict[str, Identity] = {}
    infos: dict[str, PartyInfo] = {}
    for name, (role, host, port) in parties.items():
        ident = Identity(name, X25519PrivateKey.generate())
        ids[name] = ident
        infos[name] = PartyInfo(name, role, ident.public_key, host, port)
        raw = ident.key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        write_secret(
            out / f"{name}.key", json.dumps({"name": name, "private_key": raw.hex()}).encode()
        )
    roster = Roster(infos)
    (out / "roster.json").write_text(roster.to_json())
    return roster, ids


def _recv_exact(sock: socket.socket, n: int, peer: str) -> bytes:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf), peer)
    return bytes(buf)


def _recv_into(sock: socket.socket, view: memoryview, peer: str) -> None:
    n = len(view)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except TimeoutError:
            raise PeerUnavailable(f"no data from {peer!r} before the timeout") from None
        except OSError as exc:
            raise PeerUnavailable(f"connection to {peer!r} failed: {exc}") from None
        if k == 0:
            raise PeerUnavailable(f"{peer!r} closed the connection")
        got += k


def _send_all(sock: socket.socket, data: bytes | memoryview, peer: str) -> None:
    try:
        sock.sendall(data)
    except OSError as exc:
        raise PeerUnavailable(f"cannot send to {peer!r}: {exc}") from None


def _name_bytes(name: str) -> bytes:
    raw = name.encode()
    if not 0 < len(raw) < 256:
        raise ConfigError(f"party names are 1..255 bytes, got {name!r}")
    return bytes([len(raw)]) + raw


class Channel:
    """One authenticated, encrypted, ordered connection between two roster parties.

    Built by :func:`connect` (initiator) or :meth:`Listener.accept` (responder). ``timeout``
    bounds every read in seconds.
    """

    def __init__(
        self,
        sock: socket.socket,
        me: str,
        peer: str,
        send_key: bytes,
        recv_key: bytes,
        session: bytes,
        timeout: float,
    ) -> None:
        self.sock = sock
        self.me = me
        self.peer = peer
        self.session = session
        self.timeout = timeout
        self._send = AESGCM(send_key)
        self._recv = AESGCM(recv_key)
        self._send_ctr = 0
        self._recv_ctr = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._out = bytearray(0)  # reused sealing buffer (array chunks)
        self._in = bytearray(0)  # reused receive buffer

    def _ad(self, step: int, kind: int, sender: str, receiver: str, ctr: int) -> bytes:
        return b"".join(
            [
                _INFO,
                self.session,
                struct.pack("<QBQ", step, kind, ctr),
                _name_bytes(sender),
                _name_bytes(receiver),
            ]
        )

    def seal(self, step: int, kind: int, payload: bytes) -> bytes:
        """Encrypt one frame (advances the send counter); :meth:`send_raw` puts it on the wire."""
        ctr = self._send_ctr
        self._send_ctr += 1
        nonce = bytes(4) + struct.pack("<Q", ctr)
        body = self._send.encrypt(nonce, payload, self._ad(step, kind, self.me, self.peer, ctr))
        return _HEAD.pack(8 + 1 + len(body), step, kind) + body

    def send_raw(self, frame: bytes) -> None:
        """Write an already sealed frame (tests use it to replay or tamper)."""
        _send_all(self.sock, frame, self.peer)
        self.bytes_sent += len(frame)

    def send(self, step: int, kind: int, payload: bytes) -> None:
        """Encrypt and send one message of type ``kind`` for protocol step ``step``."""
        self.send_raw(self.seal(step, kind, payload))

    def send_array(self, step: int, kind: int, data: np.ndarray) -> None:
        """Send a contiguous array's bytes as frames of ≤ :data:`CHUNK` bytes of type ``kind``.

        Each chunk is sealed into one reused buffer (``encrypt_into``): fresh multi-megabyte
        allocations cost more page faults than the AES-GCM itself. The receiver must know the
        total length (it is part of the protocol's public plan).
        """
        view = np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
        total = len(view)
        if len(self._out) < _HEAD.size + min(total, CHUNK) + _TAG:
            self._out = bytearray(_HEAD.size + min(total, CHUNK) + _TAG)
        out = memoryview(self._out)
        for start in range(0, max(total, 1), CHUNK):
            chunk = view[start : start + CHUNK]
            ctr = self._send_ctr
            self._send_ctr += 1
            n = _HEAD.size + len(chunk) + _TAG
            _HEAD.pack_into(out, 0, n - 4, step, kind)
            nonce = bytes(4) + struct.pack("<Q", ctr)
            ad = self._ad(step, kind, self.me, self.peer, ctr)
            self._send.encrypt_into(nonce, chunk, ad, out[_HEAD.size : n])
            _send_all(self.sock, out[:n], self.peer)
            self.bytes_sent += n

    def recv_frame(self, timeout: float | None = None) -> tuple[int, int, memoryview]:
        """Read the next frame, still sealed: ``(step, type, ciphertext)``.

        The ciphertext view points into a reused buffer and is valid until the next read;
        pass it to :meth:`open_frame` (frames must be opened in order, as they arrive).
        """
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        head = _recv_exact(self.sock, 4, self.peer)
        (length,) = struct.unpack("<I", head)
        if not 9 + _TAG <= length <= MAX_FRAME:
            raise MessageRejected(f"frame from {self.peer!r} has an invalid length {length}")
        # The buffer grows only as bytes actually arrive: a length field claiming 2 GiB costs
        # the sender 2 GiB of traffic before it costs this process 2 GiB of memory.
        got = 0
        while got < length:
            want = min(length, max(got * 2, _GROW))
            if len(self._in) < want:
                grown = bytearray(want)
                grown[:got] = self._in[:got]
                self._in = grown
            _recv_into(self.sock, memoryview(self._in)[got:want], self.peer)
            got = want
        rest = memoryview(self._in)[:length]
        self.bytes_received += 4 + length
        step, kind = struct.unpack_from("<QB", rest)
        return int(step), int(kind), rest[9:]

    def open_frame(
        self, step: int, kind: int, body: memoryview, out: memoryview | None = None
    ) -> bytes:
        """Authenticate and decrypt a frame from :meth:`recv_frame` (advances the counter).

        With ``out`` (exactly ``len(body) - 16`` writable bytes) the plaintext is written there
        and ``b""`` is returned. Raises :class:`MessageRejected` if the frame was tampered with,
        replayed, reordered or misaddressed.
        """
        ctr = self._recv_ctr
        nonce = bytes(4) + struct.pack("<Q", ctr)
        ad = self._ad(step, kind, self.peer, self.me, ctr)
        try:
            if out is None:
                payload = self._recv.decrypt(nonce, body, ad)
            else:
                self._recv.decrypt_into(nonce, body, ad, out)
                payload = b""
        except InvalidTag:
            raise MessageRejected(
                f"frame from {self.peer!r} failed authentication "
                "(tampered, replayed, reordered or misaddressed)"
            ) from None
        self._recv_ctr += 1
        return payload

    def recv_any(self, timeout: float | None = None) -> tuple[int, int, bytes]:
        """Next frame as ``(step, type, payload)``; raises on any authentication failure."""
        step, kind, body = self.recv_frame(timeout)
        return step, kind, self.open_frame(step, kind, body)

    def recv(self, step: int, kind: int, timeout: float | None = None) -> bytes:
        """Next frame, which must be of type ``kind`` for ``step`` (else MessageRejected)."""
        got_step, got_kind, payload = self.recv_any(timeout)
        if (got_step, got_kind) != (step, kind):
            raise MessageRejected(
                f"expected message type {kind} for step {step} from {self.peer!r}, "
                f"got type {got_kind} for step {got_step}"
            )
        return payload

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hello(name: str, peer: str | None, eph: bytes) -> bytes:
    return MAGIC + _name_bytes(name) + (_name_bytes(peer) if peer else b"") + eph


def _read_name(sock: socket.socket, who: str) -> str:
    n = _recv_exact(sock, 1, who)[0]
    return _recv_exact(sock, n, who).decode(errors="replace")


def _keys(
    me: Identity, peer_static: bytes, eph: X25519PrivateKey, peer_eph: bytes, transcript: bytes
) -> tuple[bytes, bytes, bytes]:
    try:
        ss = me.key.exchange(X25519PublicKey.from_public_bytes(peer_static))
        ee = eph.exchange(X25519PublicKey.from_public_bytes(peer_eph))
    except ValueError:
        raise MessageRejected("handshake: invalid public key") from None
    salt = hashlib.sha256(transcript).digest()
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=_INFO).derive(ss + ee)
    return okm[:32], okm[32:], salt[:16]


def _confirm(ch: Channel) -> Channel:
    ch.send(0, _CONFIRM, b"confirm")
    try:
        ch.recv(0, _CONFIRM)
    except MessageRejected:
        ch.close()
        raise MessageRejected(
            f"handshake with {ch.peer!r} failed: the peer does not hold the key of the roster "
            "(wrong set-up files or a man in the middle)"
        ) from None
    return ch


def connect(
    me: Identity, roster: Roster, peer: str, *, timeout: float = 30.0, retry_for: float = 10.0
) -> Channel:
    """Open a channel to the listening party ``peer`` (retrying refused connections)."""
    info = roster[peer]
    deadline = time.monotonic() + retry_for
    while True:
        try:
            sock = socket.create_connection((info.host, info.port), timeout=timeout)
            break
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise PeerUnavailable(
                    f"cannot reach {peer!r} at {info.host}:{info.port}: {exc}"
                ) from None
            time.sleep(0.05)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    eph = X25519PrivateKey.generate()
    hello = _hello(me.name, peer, _raw(eph))
    _send_all(sock, hello, peer)
    if _recv_exact(sock, len(MAGIC), peer) != MAGIC:
        sock.close()
        raise MessageRejected(f"{peer!r} did not answer with the channel protocol")
    name = _read_name(sock, peer)
    if name != peer:
        sock.close()
        raise MessageRejected(f"connected to {name!r} instead of {peer!r}")
    peer_eph = _recv_exact(sock, 32, peer)
    transcript = hello + MAGIC + _name_bytes(name) + peer_eph
    k_out, k_in, session = _keys(me, info.public_key, eph, peer_eph, transcript)
    return _confirm(Channel(sock, me.name, peer, k_out, k_in, session, timeout))


class Listener:
    """A listening socket for one party's address in the roster."""

    def __init__(self, me: Identity, roster: Roster, *, timeout: float = 30.0) -> None:
        self.me = me
        self.roster = roster
        self.timeout = timeout
        info = roster[me.name]
        try:
            self.sock = socket.create_server((info.host, info.port), reuse_port=False)
        except OSError as exc:
            raise ConfigError(
                f"{me.name} cannot listen on {info.host}:{info.port} (from the roster): "
                f"{exc.strerror or exc}"
            ) from None
        self.sock.listen(64)

    def accept(self, timeout: float | None = None) -> Channel:
        """Accept one party from the roster and run the responder side of the handshake."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            sock, _ = self.sock.accept()
        except TimeoutError:
            raise PeerUnavailable(f"{self.me.name}: no connection before the timeout") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        try:
            if _recv_exact(sock, len(MAGIC), "?") != MAGIC:
                raise MessageRejected("not the channel protocol")
            peer = _read_name(sock, "?")
            target = _read_name(sock, peer)
            if target != self.me.name:
                raise MessageRejected(f"{peer!r} wanted {target!r}, not {self.me.name!r}")
            info = self.roster[peer]
            peer_eph = _recv_exact(sock, 32, peer)
        except Exception:
            sock.close()
            raise
        eph = X25519PrivateKey.generate()
        hello = MAGIC + _name_bytes(peer) + _name_bytes(target) + peer_eph
        reply = MAGIC + _name_bytes(self.me.name) + _raw(eph)
        _send_all(sock, reply, peer)
        k_in, k_out, session = _keys(self.me, info.public_key, eph, peer_eph, hello + reply)
        return _confirm(Channel(sock, self.me.name, peer, k_out, k_in, session, self.timeout))

    def close(self) -> None:
        self.sock.close()
