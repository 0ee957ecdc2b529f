"""privrec: privacy-preserving recommender systems."""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

__all__ = ["__version__", "numba_cache_dir"]


def numba_cache_dir() -> str:
    """Where compiled numba kernels are cached: ``$NUMBA_CACHE_DIR`` if set, else a per-user
    cache folder (``$XDG_CACHE_HOME/privrec/numba``, ``~/.cache/privrec/numba``;
    ``~/Library/Caches/privrec/numba`` on macOS, ``%LOCALAPPDATA%\\privrec\\numba`` on Windows).

    Compiling privrec's kernels takes about a minute; caching them per user (rather than next
    to the installed sources, which may be read-only) makes that a one-off.
    """
    given = os.environ.get("NUMBA_CACHE_DIR")
    if given:
        return given
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "privrec", "numba")


def _configure_numba_cache() -> None:
    # numba reads NUMBA_CACHE_DIR when it is first imported; privrec's kernels are compiled
    # only after `import privrec`, so setting it here (unless the user did) is early enough.
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    path = numba_cache_dir()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return  # unwritable home: numba falls back to its default locations
    os.environ["NUMBA_CACHE_DIR"] = path
    config = sys.modules.get("numba.core.config")
    if config is not None and not getattr(config, "CACHE_DIR", None):
        config.CACHE_DIR = path  # type: ignore[attr-defined]  # numba imported before privrec


_configure_numba_cache()
