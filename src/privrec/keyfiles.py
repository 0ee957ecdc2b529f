"""Secret key files: written owner-only (0600) whatever was there before, and refused when not.

Every secret privrec writes to disk -- silo channel keys, MPC TLS keys, device identity keys,
model-signing keys -- goes through :func:`write_secret`, and every secret it reads through
:func:`read_secret`. The rules, like OpenSSH's for private keys:

* a secret is created with mode 0600 *atomically* (``O_CREAT`` with that mode, so it is never
  readable by others, not even for a moment); an **existing** file at that path has its mode
  set to 0600 through the open descriptor *before* anything is written into it (an
  ``install -m644 /dev/null k.key`` planted beforehand does not stay world-readable);
* symbolic links and non-regular files (FIFOs, devices) are refused (``O_NOFOLLOW``,
  ``fstat``), so a link planted at the key's path cannot redirect the secret elsewhere;
* ``exclusive=True`` refuses to replace an existing file at all (``O_EXCL``): for long-lived
  keys such as a model-signing key, whose loss cannot be undone by writing it again;
* reading a key refuses a file that group or others can read or write (:class:`KeyFileError`
  with the ``chmod 600`` that fixes it).

It lives at the package root, beside :mod:`privrec.errors` and below every floor, so that the
bottom floors (:mod:`privrec.models.signing`) and the floors above (:mod:`privrec.secure`) share
one set of rules; it imports nothing of privrec but the errors.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from privrec.errors import KeyFileError

__all__ = ["check_secret", "read_secret", "write_secret"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def write_secret(path: str | Path, data: bytes, *, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` readable and writable by the owner only (mode 0600).

    ``exclusive`` refuses an existing file (or link) at ``path`` instead of replacing it.

    Raises
    ------
    KeyFileError
        ``path`` is a symbolic link or not a regular file, cannot be written, or (with
        ``exclusive``) already exists.
    """
    p = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | _NOFOLLOW | _NONBLOCK
    try:
        # O_NONBLOCK: opening a FIFO planted at the path fails instead of waiting for a reader
        fd = os.open(p, flags | (os.O_EXCL if exclusive else 0), 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"key file {str(p)!r} already exists; refusing to overwrite it"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {str(p)!r}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {str(p)!r} is not a regular file; refusing to write")
        os.fchmod(fd, 0o600)  # an existing file keeps its inode: fix its mode before writing
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {str(p)!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return p


def check_secret(path: str | Path) -> None:
    """Refuse a key file that is not a regular file or that group or others may access."""
    p = Path(path)
    try:
        info = os.stat(p, follow_symlinks=True)
    except FileNotFoundError:
        raise KeyFileError(f"key file {str(p)!r} not found") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {str(p)!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"key file {str(p)!r} is not a regular file")
    if os.name == "posix" and info.st_mode & 0o077:
        raise KeyFileError(
            f"key file {str(p)!r} is accessible by other users (mode "
            f"{stat.S_IMODE(info.st_mode):03o}); run `chmod 600 {p}` (and consider the key "
            "exposed if others could read it)"
        )


def read_secret(path: str | Path) -> bytes:
    """The bytes of a key file after :func:`check_secret`."""
    check_secret(path)
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {str(path)!r}: {exc.strerror or exc}") from None
