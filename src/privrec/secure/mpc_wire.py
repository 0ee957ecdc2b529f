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
"""

from __future__ import annotations

import io
import pickle
from types import SimpleNamespace
from typing import Any

from privrec.errors import MessageRejected

__all__ = ["SAFE_PICKLE", "install", "safe_loads"]


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
