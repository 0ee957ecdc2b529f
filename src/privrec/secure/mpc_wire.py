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

from privrec.errors import MessageRejected

__all__ = ["SAFE_PICKLE", "bounded_exchanger", "buffer_cap", "install", "safe_loads"]


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # built-in values need no global: a pickle that names one is not plain data
        raise MessageRejected(
            "a peer sent a pickle naming a Python object, not plain built-in data: refused "
            "(it could run code in this process)"
        )


def safe_loads(data: bytes) -> Any:
    """``pickle.loads`` for built-in data only (numbers, strings, bytes, containers)."""
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


def bounded_exchanger(base: type, cap: int) -> type:
    """A subclass of MPyC's ``MessageExchanger`` (``base``) that buffers at most ``cap`` bytes.

    Counted: the unparsed bytes plus every complete payload waiting for its receive. A
    connection past the cap is closed, the receives waiting on it fail, and so does every later
    one, with :class:`~privrec.errors.MessageRejected`.
    """

    class BoundedExchanger(base):  # type: ignore[misc]
        _rejected: MessageRejected | None = None

        def _held(self) -> int:
            return len(self.bytes) + sum(
                len(v) for v in self.buffers.values() if isinstance(v, bytes | bytearray)
            )

        def _reject(self, why: str) -> None:
            self._rejected = MessageRejected(why)
            for fut in list(self.buffers.values()):
                if hasattr(fut, "set_exception") and not fut.done():
                    fut.set_exception(self._rejected)
            self.buffers.clear()
            self.bytes = bytearray()
            transport = getattr(self, "transport", None)
            if transport is not None:
                transport.abort()

        def data_received(self, data: bytes) -> None:
            if self._rejected is not None:
                return
            if self._held() + len(data) > cap:
                self._reject(
                    f"a peer sent more than {cap >> 20} MiB this party had not yet read: "
                    "refused (it could exhaust this party's memory)"
                )
                return
            super().data_received(data)

        def receive(self, pc: int) -> Any:
            if self._rejected is not None:
                fut = self.runtime._loop.create_future()
                fut.set_exception(self._rejected)
                return fut
            return super().receive(pc)

    return BoundedExchanger
