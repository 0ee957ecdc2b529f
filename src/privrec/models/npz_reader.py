"""Reading a model archive's members without trusting it: headers first, data only on request.

:class:`ArchiveReader` opens the ``.npz`` (a zip of ``.npy`` members), checks the member names,
the declared sizes against the byte cap, the compressed sizes against the file on disk, reads
the JSON metadata, then parses every member's ``.npy`` header — dtype, shape, byte count,
agreement with the metadata — without decompressing its data. The caller looks at those
headers (:func:`privrec.models.persistence.load_model` checks them against the model's layout
and the decompression-ratio bound of :mod:`privrec.models.file_layout`) and names the members
to decompress; nothing else is inflated. Every failure is a
:class:`~privrec.errors.ModelFileError` naming the file and the member.
"""

from __future__ import annotations

import io
import json
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privrec.errors import DataError, ModelFileError, ModelFileTooLargeError
from privrec.models.file_layout import check_ratio

__all__ = ["ENV_MAX", "FORMAT", "KINDS", "READABLE", "ArchiveReader", "Check", "Header"]

FORMAT = "privrec-model"
READABLE = (1, 2)
ENV_MAX = "PRIVREC_MAX_MODEL_BYTES"
_MAX_META_BYTES = 64 << 20
_MAX_MEMBERS = 256
_MAX_NDIM = 3
_NAME = re.compile(
    r"^(__meta__|item_ids|user_ids|ui_data|ui_indices|ui_indptr|ui_shape|state_[A-Za-z_][A-Za-z0-9_]{0,63})$"
)
#: bool, signed/unsigned integers, floats, unicode text: nothing that can hold objects
KINDS = frozenset("biufU")

# What the zip layer raises on a damaged archive (central directory, local headers, inflate,
# CRC, unsupported versions or compression methods, encrypted members).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
)


@dataclass(frozen=True)
class Header:
    """One member's parsed ``.npy`` header and its zip sizes (nothing decompressed)."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool
    offset: int  # bytes of .npy header before the data
    size: int  # uncompressed member size (header + data)
    compressed: int
    info: zipfile.ZipInfo

    @property
    def nbytes(self) -> int:
        return self.size - self.offset


#: Given the metadata and every member's header, check them and name the members to read,
#: each with whether it is exempt from the ratio bound (``sparse``), in the order to read them.
Plan = Callable[[dict[str, Any], Mapping[str, Header]], Mapping[str, bool]]
#: Called with each member right after it is inflated, before the next one is: a member whose
#: contents make the rest pointless (a catalogue of duplicate ids, which pins the size of the
#: ``sparse`` arrays) is refused before gigabytes of zeros are inflated for it.
Check = Callable[[str, np.ndarray], None]
#: Bytes inflated per read: a member is decompressed straight into its array, in blocks (a
#: single ``read(n)`` would build an ``n``-byte ``bytes`` object beside the array: 2–3 × the
#: declared size at peak).
_READ_BLOCK = 1 << 20


class ArchiveReader:
    """Reads one model archive with every size checked before decompression."""

    def __init__(
        self, path: Path, max_bytes: int, data: bytes | None = None, check: Check | None = None
    ) -> None:
        self.path = path
        self.limit = max_bytes
        #: the file's bytes, when the caller already read (and checked) them: a signature
        #: verified over ``data`` then covers exactly what is parsed (no re-read of ``path``)
        self.data = data
        #: sees each array as soon as it is inflated, in the plan's order
        self.check = check

    def error(self, message: str, field: str | None = None, **kw: Any) -> ModelFileError:
        return ModelFileError(message, file=self.path, field=field, **kw)

    def too_large(self, field: str, needed: int) -> ModelFileTooLargeError:
        return ModelFileTooLargeError(
            f"the model file declares {needed:,} bytes of arrays, above the limit of "
            f"{self.limit:,} bytes (raise it with max_bytes= or ${ENV_MAX})",
            file=self.path,
            field=field,
        )

    def read(self, plan: Plan) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The metadata and the arrays ``plan`` asks for, after ``plan`` saw every header;
        :attr:`check` sees each array as soon as it is inflated (in the plan's order)."""
        try:
            size = self.path.stat().st_size if self.data is None else len(self.data)
        except OSError as exc:
            raise DataError("model file cannot be read", file=self.path, found=str(exc)) from None
        if size > self.limit:
            raise self.too_large("<file>", size)
        try:
            zf = zipfile.ZipFile(self.path if self.data is None else io.BytesIO(self.data))
        except _ZIP_ERRORS as exc:
            raise self.error(
                "not a privrec model file (not an .npz archive)", found=str(exc)
            ) from None
        with zf:
            try:
                return self._read_members(zf, zf.infolist(), size, plan)
            except DataError:
                raise
            except _ZIP_ERRORS as exc:
                raise self.error(
                    "the model archive is corrupt", found=f"{type(exc).__name__}: {exc}"
                ) from None

    def _read_members(
        self,
        zf: zipfile.ZipFile,
        infos: list[zipfile.ZipInfo],
        file_size: int,
        plan: Plan,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if len(infos) > _MAX_MEMBERS:
            raise self.error("too many members", expected=f"<= {_MAX_MEMBERS}", found=len(infos))
        members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            key = name[:-4] if name.endswith(".npy") else name
            if not name.endswith(".npy") or not _NAME.match(key):
                raise self.error("unexpected member in the model archive", field=name)
            if key in members:
                raise self.error("duplicate member in the model archive", field=name)
            members[key] = info
        declared = sum(i.file_size for i in infos)
        if declared > self.limit:
            raise self.too_large("<archive>", declared)
        # members sharing compressed bytes (overlapping entries) would inflate the same data
        # many times: together they must fit in the file
        if sum(i.compress_size for i in infos) > file_size:
            raise self.error(
                "the archive's members claim more compressed bytes than the file holds",
                field="<archive>",
                expected=f"<= {file_size:,} bytes",
                found=f"{sum(i.compress_size for i in infos):,} bytes",
            )
        if "__meta__" not in members:
            raise self.error("not a privrec model file (no metadata)", field="__meta__")
        head = self._header(zf, members.pop("__meta__"), "__meta__", None)
        if head.nbytes > _MAX_META_BYTES:
            raise self.too_large("__meta__", head.nbytes)
        check_ratio("__meta__", head.size, head.compressed, self.path)
        raw = self._data(zf, head, "__meta__")
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise self.error(
                "metadata must be a 1-D uint8 array", field="__meta__", found=str(raw.dtype)
            )
        try:
            meta = json.loads(raw.tobytes().decode("utf-8"), object_pairs_hook=_unique_keys)
        except _DuplicateKeyError as exc:
            raise self.error(
                "metadata repeats a key (JSON readers disagree on which value counts: the "
                "guarantee checked here need not be the one another tool shows)",
                field="__meta__",
                found=str(exc),
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise self.error("metadata is not JSON", field="__meta__", found=str(exc)) from None
        meta = self._check_meta(meta)
        declared_arrays = meta.get("arrays")
        if declared_arrays is not None and set(declared_arrays) != set(members):
            raise self.error(
                "the archive's arrays differ from those the metadata declares",
                field="arrays",
                expected=str(sorted(declared_arrays)),
                found=sorted(members),
            )
        headers: dict[str, Header] = {}
        total = 0
        for key, info in members.items():
            spec = None if declared_arrays is None else declared_arrays[key]
            headers[key] = h = self._header(zf, info, key, spec)
            total += h.nbytes
            if total > self.limit:
                raise self.too_large(key, total)
        wanted = plan(meta, headers)
        for key, sparse in wanted.items():  # every bound before the first byte is inflated
            h = headers[key]
            check_ratio(
                key, h.size, h.compressed, self.path, sparse=sparse, text=h.dtype.kind == "U"
            )
        out: dict[str, np.ndarray] = {}
        for key in wanted:
            out[key] = self._data(zf, headers[key], key)
            if self.check is not None:
                self.check(key, out[key])
        return meta, out

    def _check_meta(self, meta: object) -> dict[str, Any]:
        if not isinstance(meta, dict):
            raise self.error(
                "metadata must be a JSON object", field="__meta__", found=type(meta).__name__
            )
        fmt, version = meta.get("format"), meta.get("format_version")
        if fmt != FORMAT or version not in READABLE or isinstance(version, bool):
            raise self.error(
                "unsupported model file format",
                field="format",
                expected=f"{FORMAT} v{' or v'.join(map(str, READABLE))}",
                found=f"{fmt} v{version}",
            )
        types = {
            "model": str,
            "params": dict,
            "extra": dict,
            "has_user_data": bool,
        }
        for key, typ in types.items():
            if key in meta and not isinstance(meta[key], typ):
                raise self.error(
                    f"metadata field {key!r} has the wrong type",
                    field=key,
                    expected=typ.__name__,
                    found=type(meta[key]).__name__,
                )
        if "model" not in meta or "params" not in meta:
            raise self.error("metadata lacks the model name or its parameters", field="model")
        arrays = meta.get("arrays")
        if version >= 2:
            ok = isinstance(arrays, dict) and all(
                isinstance(v, dict)
                and isinstance(v.get("dtype"), str)
                and isinstance(v.get("shape"), list)
                and all(
                    isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v["shape"]
                )
                for v in arrays.values()
            )
            if not ok:
                raise self.error(
                    "metadata must declare every array's dtype and shape",
                    field="arrays",
                    expected="{name: {dtype: str, shape: [int, ...]}}",
                )
        return meta

    def _header(
        self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, spec: Mapping[str, Any] | None
    ) -> Header:
        """Parse and check one member's header; only its first bytes are inflated."""
        with zf.open(info) as fh:
            shape, fortran, dtype = _npy_header(
                fh, lambda msg, found: self.error(msg, field=key, found=found)
            )
            offset = fh.tell()
        if dtype.kind not in KINDS or dtype.hasobject or dtype.fields is not None:
            raise self.error(
                "array dtype not allowed in a model file",
                field=key,
                expected="bool, integer, float or text",
                found=str(dtype),
            )
        if len(shape) > _MAX_NDIM:
            raise self.error("array has too many dimensions", field=key, found=len(shape))
        if spec is not None and (
            spec["dtype"] != dtype.str or [int(s) for s in spec["shape"]] != list(shape)
        ):
            raise self.error(
                "array header disagrees with the metadata",
                field=key,
                expected=f"{spec['dtype']} {tuple(spec['shape'])}",
                found=f"{dtype.str} {tuple(shape)}",
            )
        count = 1
        for s in shape:
            count *= int(s)
        nbytes = count * dtype.itemsize
        if nbytes > self.limit:
            raise self.too_large(key, nbytes)
        if offset + nbytes != info.file_size:
            raise self.error(
                "array data size disagrees with its header",
                field=key,
                expected=f"{offset + nbytes} bytes",
                found=f"{info.file_size} bytes",
            )
        return Header(shape, dtype, fortran, offset, info.file_size, info.compress_size, info)

    def _data(self, zf: zipfile.ZipFile, head: Header, key: str) -> np.ndarray:
        """Decompress one member's data (its size and ratio were checked from the header)."""
        nbytes = head.nbytes
        buf = bytearray(nbytes)
        view = memoryview(buf)
        with zf.open(head.info) as fh:
            if len(fh.read(head.offset)) != head.offset:
                raise self.error("array data is truncated", field=key)
            pos = 0
            while pos < nbytes:  # in blocks: never a second copy of the member in memory
                block = fh.read(min(_READ_BLOCK, nbytes - pos))
                if not block:
                    raise self.error("array data is truncated", field=key)
                view[pos : pos + len(block)] = block
                pos += len(block)
        arr = np.frombuffer(buf, dtype=head.dtype)
        arr = arr.reshape(head.shape, order="F" if head.fortran else "C")
        if not head.dtype.isnative:
            arr = arr.astype(head.dtype.newbyteorder("="))
        return arr


class _DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (Python keeps the last of repeated keys,
    other readers the first: a repeated ``epsilon`` would show each reader another ε)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return out


_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10_000


def _npy_header(fh: Any, error: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Parse an ``.npy`` header from ``fh`` without trusting it.

    numpy's own reader tokenises the header text, which a hostile file can make raise
    tokenizer errors; here the header is a bounded, literal-only Python dict with exactly the
    keys ``descr`` (a dtype string), ``fortran_order`` (bool) and ``shape`` (tuple of
    non-negative ints), else ``error(message, found)`` is raised.
    """
    import ast

    start = fh.read(8)
    if len(start) != 8 or start[:6] != _MAGIC:
        raise error("not an .npy array", None)
    major = start[6]
    if major not in (1, 2, 3) or start[7] != 0:
        raise error("unsupported .npy version", f"{start[6]}.{start[7]}")
    size_bytes = 2 if major == 1 else 4
    raw = fh.read(size_bytes)
    if len(raw) != size_bytes:
        raise error("truncated .npy header", None)
    hlen = int.from_bytes(raw, "little")
    if hlen > _MAX_HEADER:
        raise error("oversized .npy header", hlen)
    text = fh.read(hlen)
    if len(text) != hlen:
        raise error("truncated .npy header", None)
    try:
        with warnings.catch_warnings():  # odd escapes in hostile text warn while parsing
            warnings.simplefilter("ignore")
            header = ast.literal_eval(text.decode("utf-8" if major == 3 else "latin-1"))
    except Exception as exc:  # any failure to read untrusted header text means "malformed"
        raise error("malformed array header", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise error("malformed array header", "expected keys descr, fortran_order, shape")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str) or not isinstance(fortran, bool):
        raise error("malformed array header", "descr must be text and fortran_order a bool")
    if not isinstance(shape, tuple) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise error("malformed array shape", shape)
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError) as exc:
        raise error("unknown array dtype", str(exc)) from None
    return shape, fortran, dtype
