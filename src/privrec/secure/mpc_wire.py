"""What a peer's bytes may become: MPyC's pickle, restricted to plain Python data.

MPyC serialises ``transfer`` values (and, by default, numpy share arrays) with :mod:`pickle` and
reads the peers' bytes back with ``pickle.loads`` — which runs whatever a crafted pickle names. A
lying party (or, without TLS, anyone who reaches a listening port first) could run code in the
honest parties' processes and copy the secret item matrix. Allowing numpy's own array rebuilding
was not enough either: a dtype state with forged flags made raw peer bytes into object pointers
(SIGSEGV; a reviewer's bypass of the first fix). So share arrays travel as field elements
(``--mix32-64bit``, set by :mod:`privrec.secure.mpc`), and :func:`install` replaces the
``pickle`` MPyC uses by one whose ``loads`` builds only built-in values — numbers, strings,
bytes and containers — naming no global at all; anything else is refused with
:class:`~privrec.errors.MessageRejected`, which the protocol turns into an abort. ``dumps`` is
the standard one (what this party sends is its own).

Size is bounded too: MPyC keeps every byte a peer sends — up to 4 GiB per message, and any
number of messages for program counters nobody asked for yet — so a lying peer could make an
honest party hold as much memory as it cares to send. :func:`bounded_exchanger` caps what one
connection may have buffered at once (set from the public parameters by
:mod:`privrec.secure.mpc`); past it the connection is closed and every receive fails with
:class:`~privrec.errors.MessageRejected` (an abort, nothing output).
"""

from __future__ import annotations

import io
import pickle
from types import SimpleNamespace
from typing import Any

from privrec.errors import MessageRejected, ProtocolAbort

__all__ = [
    "SAFE_PICKLE",
    "bounded_exchanger",
    "buffer_cap",
    "install",
    "safe_loads",
    "until_refused",
]


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # built-in values need no global: a pickle that names one is not plain data
        raise MessageRejected(
            "a peer sent a pickle naming a Python object, not plain built-in data: refused "
            "(it could run code in this process)"
        )


#: Largest pickle a peer may send: the only one is the parameter digest (a 64-character string,
#: ~80 bytes). Plain data still amplifies — one opcode byte becomes an 8-byte list slot, and a
#: 16 MiB pickle of ``DUP`` s took 397 MiB — so the buffer cap alone did not bound the memory.
MAX_PICKLE_BYTES = 64 * 1024


def safe_loads(data: bytes) -> Any:
    """``pickle.loads`` for built-in data only (numbers, strings, bytes, containers), of at most
    :data:`MAX_PICKLE_BYTES`."""
    if len(data) > MAX_PICKLE_BYTES:
        raise MessageRejected(
            f"a peer sent a pickle of more than {MAX_PICKLE_BYTES:,} bytes: refused (plain data "
            "can still take many times its size in memory)"
        )
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except MessageRejected:
        raise
    except Exception as exc:  # truncated or malformed bytes
        raise MessageRejected(f"a peer sent malformed data ({type(exc).__name__})") from None


#: Stands in for the :mod:`pickle` module inside ``mpyc.runtime``.
SAFE_PICKLE = SimpleNamespace(dumps=pickle.dumps, loads=safe_loads)


def install(runtime_module: Any) -> None:
    """Make ``runtime_module`` (``mpyc.runtime``) read peers' pickles with :func:`safe_loads`."""
    runtime_module.pickle = SAFE_PICKLE


def buffer_cap(n_items: int, n_factors: int) -> int:
    """Bytes one connection may hold unread: 64 MiB plus 256 bytes per item-matrix entry.

    An honest peer's largest message is one share of the ``n_items × n_factors`` item matrix
    (a few bytes per field element); the cap leaves far more room than that and than the
    messages of several rounds arriving early, and stays bounded (164 MiB at 10k × 64).
    """
    return (64 << 20) + 256 * int(n_items) * int(n_factors)


#: Bytes charged per buffered message besides its payload (the dict entry and the object): a peer
#: sending empty messages must not buffer for free.
ENTRY_OVERHEAD = 128
#: Messages one connection may have waiting for their receive (or receives waiting for their
#: message) at once; an honest peer stays far below (a few rounds of a vectorised protocol).
MAX_PENDING = 65_536


class _CountingBuffers(dict[Any, Any]):
    """MPyC's per-connection buffers (program counter → payload, or a receive's future) with
    what they hold kept as a running count — O(1) per message, never a walk over the dict."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0

    @staticmethod
    def _size(value: Any) -> int:
        return ENTRY_OVERHEAD + (len(value) if isinstance(value, bytes | bytearray) else 0)

    def __setitem__(self, key: Any, value: Any) -> None:
        if key in self:
            self.held -= self._size(dict.__getitem__(self, key))
        super().__setitem__(key, value)
        self.held += self._size(value)

    def __delitem__(self, key: Any) -> None:
        self.held -= self._size(dict.__getitem__(self, key))
        super().__delitem__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            value = super().pop(key)
            self.held -= self._size(value)
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def clear(self) -> None:
        super().clear()
        self.held = 0


def bounded_exchanger(base: type, cap: int) -> type:
    """A subclass of MPyC's ``MessageExchanger`` (``base``) that holds at most ``cap`` bytes.

    Counted: the unparsed bytes plus every buffered message's payload and
    :data:`ENTRY_OVERHEAD`, and at most :data:`MAX_PENDING` messages at once. A connection past
    either is closed; the receives waiting on it fail, and so does every later one, with
    :class:`~privrec.errors.MessageRejected`; and the runtime's ``_privrec_refused`` future
    (set by :mod:`privrec.secure.mpc` around the protocol) fails, so the party aborts at once
    instead of waiting for its timeout — MPyC's own callbacks only log a failed receive.
    """

    class BoundedExchanger(base):  # type: ignore[misc]
        _rejected: MessageRejected | None = None
        _refused_claim = False

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.buffers = _CountingBuffers()

        def _held(self) -> int:
            return len(self.bytes) + int(self.buffers.held)

        def _reject(self, why: str) -> None:
            self._rejected = MessageRejected(why)
            for fut in list(self.buffers.values()):
                if hasattr(fut, "set_exception") and not fut.done():
                    fut.set_exception(self._rejected)
            self.buffers.clear()
            self.bytes = bytearray()
            _fail(self.runtime, self._rejected)
            # reset every link, not only this one: the other honest party sees a reset (an
            # abort, below) instead of waiting out its timeout for a party that stopped
            for peer in getattr(self.runtime, "parties", ()):
                transport = getattr(peer.protocol, "transport", None)
                if transport is not None:
                    transport.abort()
            transport = getattr(self, "transport", None)
            if transport is not None:
                transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer_pid is None or self._refused_claim:
                # never a party's link (a scan, or a connection refused for the id it claimed):
                # MPyC would unset party ``None`` (a TypeError) and the party would abort
                return
            # a link lost with an error, or closed before this party began its shutdown, ends
            # the protocol for this party too (MPyC alone would wait for its receives forever)
            if exc is not None or not getattr(self.runtime, "_privrec_closing", False):
                _fail(
                    self.runtime,
                    ProtocolAbort(
                        "protocol",
                        f"the link with party {self.peer_pid} was "
                        + ("reset" if exc is not None else "closed")
                        + " before the protocol ended; nothing was output",
                    ),
                )
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._rejected is not None or self._refused_claim:
                return
            if self.peer_pid is None and len(self.bytes) + len(data) >= 2:
                claimed = int.from_bytes((bytes(self.bytes[:2]) + data[:2])[:2], "little")
                if not _may_claim(self.runtime, claimed, self.transport):
                    # another party's id, one already connected, or one this party does not
                    # listen for: drop this connection only (the real party may still connect)
                    self._refused_claim = True
                    self.bytes = bytearray()
                    if self.transport is not None:
                        self.transport.abort()
                    return
            if self._held() + len(data) > cap:
                self._reject(
                    f"a peer sent more than {cap >> 20} MiB this party had not yet read: "
                    "refused (it could exhaust this party's memory)"
                )
                return
            try:
                super().data_received(data)
            except (AttributeError, TypeError):
                # MPyC's parser met a message number it already holds a message for (a
                # payload has no set_result): a peer repeating itself is refused
                self._reject("a peer sent the same message number twice: refused")
                return
            if self._held() > cap or len(self.buffers) > MAX_PENDING:
                self._reject(
                    f"a peer sent more than {MAX_PENDING:,} messages (or {cap >> 20} MiB) this "
                    "party had not yet read: refused (it could exhaust this party's memory)"
                )

        def receive(self, pc: int) -> Any:
            if self._rejected is not None:
                fut = self.runtime._loop.create_future()
                fut.set_exception(self._rejected)
                return fut
            return super().receive(pc)

    return BoundedExchanger


def _may_claim(runtime: Any, claimed: int, transport: Any) -> bool:
    """Whether a connecting peer may be party ``claimed``: MPyC believes the first two bytes.

    Only parties below this one connect to it, each once; over TLS the peer's certificate must
    name ``claimed`` (:func:`~privrec.secure.mpc_tls.tls_name`) — before, any party certificate
    could claim any id, and a party claiming another's received the messages meant for it.
    """
    from privrec.secure.mpc_tls import tls_name

    parties = getattr(runtime, "parties", ())
    if not 0 <= claimed < min(int(runtime.pid), len(parties)):
        return False
    if parties[claimed].protocol is not None:  # already connected
        return False
    if transport is None or transport.get_extra_info("ssl_object") is None:
        return True  # plain TCP: nothing to check the claim against (loopback only)
    cert = transport.get_extra_info("peercert") or {}
    names = {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}
    return tls_name(claimed) in names


async def until_refused(coro: Any, runtime: Any) -> Any:
    """Run ``coro`` until it finishes or a connection refuses its peer (whichever comes first).

    Sets ``runtime._privrec_refused``, which :func:`bounded_exchanger`'s connections fail; the
    protocol is then cancelled and the refusal raised, rather than the party waiting out its
    timeout on receives that will never complete.
    """
    import asyncio
    import contextlib

    refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    runtime._privrec_refused = refused
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.wait({task, refused}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            exc = refused.exception()
            assert exc is not None
            raise exc
        return task.result()
    finally:
        if not task.done():  # refused, or this wait was cancelled (a timeout): stop the protocol
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if refused.done() and not refused.cancelled():
            refused.exception()  # retrieved: no "exception was never retrieved" at exit
        else:
            refused.cancel()


def _fail(runtime: Any, exc: BaseException) -> None:
    """Fail the runtime's ``_privrec_refused`` future (set by :func:`until_refused`) once."""
    refused = getattr(runtime, "_privrec_refused", None)
    if refused is not None and not refused.done():
        refused.set_exception(exc)
