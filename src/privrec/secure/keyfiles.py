"""Secret key files: moved to :mod:`privrec.keyfiles` (below every floor, so that model signing
in :mod:`privrec.models` uses the same rules); this name stays for the modules that import it."""

from __future__ import annotations

from privrec.keyfiles import check_secret, read_secret, write_secret

__all__ = ["check_secret", "read_secret", "write_secret"]
