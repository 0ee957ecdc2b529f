"""Model files: one ``.npz`` (a zip of ``.npy`` arrays) plus JSON metadata — no pickle.

Writing. A private model's file holds only what its guarantee releases and what a user's own
side needs to be served: the item catalogue, the released arrays (``state_*``), the
hyper-parameters and the guarantee. No user ids, no user count, no training structure —
``user_ids`` / ``ui_*`` are written only for non-private models, or for a private one when
``include_user_data=True`` is asked for explicitly (which warns: that file is then outside
the guarantee). The metadata records the dtype and shape of every array.

Reading (:func:`load_model`) treats the file as hostile until proven otherwise:

1. the archive's member names must be ones privrec writes, and the declared sizes must fit
   the limit (``max_bytes``, default 4 GiB or ``$PRIVREC_MAX_MODEL_BYTES``);
2. each member's ``.npy`` header is parsed *before* its data is decompressed: plain numeric or
   text dtypes only, shape and dtype equal to what the metadata declares, the byte count equal
   to the header's, and the running total within the limit — a "decompression bomb" stops at
   its header;
3. the metadata is a JSON object of the expected shape; hyper-parameters are validated
   strictly (a string where a number belongs is an error, not coerced);
4. the model checks its own arrays (shapes against the catalogue and the parameters, index
   ranges, finiteness) and a private model's guarantee is re-verified: ε recomputed from the
   stored events, δ / unit / accountant consistent with the parameters
   (:mod:`privrec.privacy.verify`);
5. the loaded model scores one empty history, so a file that loads also works.

Every failure is a :class:`~privrec.errors.ModelFileError` (a ``DataError``) naming the file
and the field.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic
import scipy.sparse as sp

from privrec.errors import (
    ConfigError,
    DataError,
    ModelFileError,
    ModelFileTooLargeError,
    PrivacyWarning,
)

if TYPE_CHECKING:
    from privrec.models.base import Recommender

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT",
    "FORMAT_VERSION",
    "USER_DATA_KEYS",
    "load_model",
    "max_model_bytes",
    "save_model",
]

FORMAT = "privrec-model"
FORMAT_VERSION = 2
_READABLE = (1, 2)
#: Default cap on the decompressed size of a model file's arrays.
DEFAULT_MAX_BYTES = 4 << 30
_ENV_MAX = "PRIVREC_MAX_MODEL_BYTES"
_MAX_META_BYTES = 64 << 20
_MAX_MEMBERS = 256
_MAX_NDIM = 3
#: Arrays that describe training users; never written for a private model by default.
USER_DATA_KEYS = ("user_ids", "ui_data", "ui_indices", "ui_indptr", "ui_shape")
_NAME = re.compile(
    r"^(__meta__|item_ids|user_ids|ui_data|ui_indices|ui_indptr|ui_shape|state_[A-Za-z_][A-Za-z0-9_]{0,63})$"
)
# bool, signed/unsigned integers, floats, unicode text: nothing that can hold objects
_KINDS = frozenset("biufU")


def max_model_bytes(explicit: int | None = None) -> int:
    """The size cap for loading: ``explicit``, else ``$PRIVREC_MAX_MODEL_BYTES``, else 4 GiB."""
    if explicit is not None:
        if explicit <= 0:
            raise ConfigError(f"max_bytes must be positive, got {explicit}")
        return int(explicit)
    raw = os.environ.get(_ENV_MAX)
    if raw:
        try:
            value = int(float(raw))
        except ValueError:
            raise ConfigError(f"{_ENV_MAX} must be a number of bytes, found {raw!r}") from None
        if value <= 0:
            raise ConfigError(f"{_ENV_MAX} must be positive, found {raw!r}")
        return value
    return DEFAULT_MAX_BYTES


# --------------------------------------------------------------------------------- writing
def _ids_for_npz(ids: np.ndarray) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.dtype == object:
        return arr.astype(str)
    return arr


def _npz_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix != ".npz":
        p = p.with_suffix(p.suffix + ".npz") if p.suffix else p.with_suffix(".npz")
    return p


def save_model(model: Recommender, path: str | Path, *, include_user_data: bool | None) -> Path:
    """Write ``model`` (see :meth:`privrec.models.base.Recommender.save`)."""
    from privrec import __version__
    from privrec.models.private import PrivateRecommender

    model._check_fitted()
    private = isinstance(model, PrivateRecommender)
    released_only = bool(getattr(model, "_released_only", False))
    if include_user_data is None:  # defaults: non-private models keep their data when they have it
        with_data = model.save_user_data and not released_only
    else:
        with_data = include_user_data
    if with_data and released_only:
        raise ConfigError(
            f"this {type(model).__name__} holds no training interactions (it was loaded from or "
            "built from released arrays only), so include_user_data=True has nothing to store"
        )
    if with_data and private:
        warnings.warn(
            f"saving the training interactions and user ids with a private {type(model).__name__}: "
            "the file then holds data its privacy guarantee does not cover — keep it private",
            PrivacyWarning,
            stacklevel=3,
        )
    arrays: dict[str, np.ndarray] = {"item_ids": _ids_for_npz(model.item_ids_)}
    if with_data:
        um = model.user_items_
        arrays |= {
            "user_ids": _ids_for_npz(model.user_ids_),
            "ui_data": um.data,
            "ui_indices": um.indices,
            "ui_indptr": um.indptr,
            "ui_shape": np.asarray(um.shape, dtype=np.int64),
        }
    for key, value in model._state().items():
        arrays[f"state_{key}"] = np.require(np.asarray(value), requirements="C")
    for key, value in arrays.items():
        if value.dtype.kind not in _KINDS:
            raise ConfigError(
                f"array {key!r} has dtype {value.dtype}, which model files do not hold"
            )
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "class": type(model).__name__,
        "privrec_version": __version__,
        "params": model.config().model_dump(mode="json"),
        "extra": model._extra_meta(),
        "has_user_data": bool(with_data),
        "arrays": {k: {"dtype": v.dtype.str, "shape": list(v.shape)} for k, v in arrays.items()},
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    out = _npz_path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    return out


# --------------------------------------------------------------------------------- reading
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


class _Reader:
    """Reads the members of one model archive with every size checked before decompression."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.budget = max_bytes
        self.limit = max_bytes

    def error(self, message: str, field: str | None = None, **kw: Any) -> ModelFileError:
        return ModelFileError(message, file=self.path, field=field, **kw)

    def too_large(self, field: str, needed: int) -> ModelFileTooLargeError:
        return ModelFileTooLargeError(
            f"the model file declares {needed:,} bytes of arrays, above the limit of "
            f"{self.limit:,} bytes (raise it with max_bytes= or ${_ENV_MAX})",
            file=self.path,
            field=field,
        )

    def read_all(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise DataError("model file cannot be read", file=self.path, found=str(exc)) from None
        if size > self.limit:
            raise self.too_large("<file>", size)
        try:
            zf = zipfile.ZipFile(self.path)
        except _ZIP_ERRORS as exc:
            raise self.error(
                "not a privrec model file (not an .npz archive)", found=str(exc)
            ) from None
        with zf:
            try:
                infos = zf.infolist()
                return self._read_members(zf, infos)
            except DataError:
                raise
            except _ZIP_ERRORS as exc:
                raise self.error(
                    "the model archive is corrupt", found=f"{type(exc).__name__}: {exc}"
                ) from None

    def _read_members(
        self, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]
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
        if "__meta__" not in members:
            raise self.error("not a privrec model file (no metadata)", field="__meta__")
        raw = self._read_npy(zf, members.pop("__meta__"), "__meta__", cap=_MAX_META_BYTES)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise self.error(
                "metadata must be a 1-D uint8 array", field="__meta__", found=str(raw.dtype)
            )
        try:
            meta = json.loads(raw.tobytes().decode("utf-8"))
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
        arrays: dict[str, np.ndarray] = {}
        for key, info in members.items():
            spec = None if declared_arrays is None else declared_arrays[key]
            arrays[key] = self._read_npy(zf, info, key, spec=spec)
        return meta, arrays

    def _check_meta(self, meta: object) -> dict[str, Any]:
        if not isinstance(meta, dict):
            raise self.error(
                "metadata must be a JSON object", field="__meta__", found=type(meta).__name__
            )
        fmt, version = meta.get("format"), meta.get("format_version")
        if fmt != FORMAT or version not in _READABLE or isinstance(version, bool):
            raise self.error(
                "unsupported model file format",
                field="format",
                expected=f"{FORMAT} v{' or v'.join(map(str, _READABLE))}",
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

    def _read_npy(
        self,
        zf: zipfile.ZipFile,
        info: zipfile.ZipInfo,
        key: str,
        *,
        spec: Mapping[str, Any] | None = None,
        cap: int | None = None,
    ) -> np.ndarray:
        with zf.open(info) as fh:
            shape, fortran, dtype = _npy_header(
                fh, lambda msg, found: self.error(msg, field=key, found=found)
            )
            header_len = fh.tell()
            if dtype.kind not in _KINDS or dtype.hasobject or dtype.fields is not None:
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
            if cap is not None and nbytes > cap:
                raise self.too_large(key, nbytes)
            if nbytes > self.budget:
                raise self.too_large(key, self.limit - self.budget + nbytes)
            if header_len + nbytes != info.file_size:
                raise self.error(
                    "array data size disagrees with its header",
                    field=key,
                    expected=f"{header_len + nbytes} bytes",
                    found=f"{info.file_size} bytes",
                )
            self.budget -= nbytes
            buf = bytearray(nbytes)
            view = memoryview(buf)
            pos = 0
            while pos < nbytes:
                got = fh.readinto(view[pos:])  # type: ignore[attr-defined]
                if not got:
                    raise self.error("array data is truncated", field=key)
                pos += got
        arr = np.frombuffer(buf, dtype=dtype)
        arr = arr.reshape(shape, order="F" if fortran else "C")
        if not dtype.isnative:
            arr = arr.astype(dtype.newbyteorder("="))
        return arr


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


def _strict_params(cls: type[Recommender], params: dict[str, Any], path: Path) -> Any:
    """The model's config from stored parameters, validated strictly (no str → number coercion)."""
    from privrec.models.base import _config_error

    try:
        return cls.Config.model_validate_json(json.dumps(params), strict=True)
    except pydantic.ValidationError as exc:
        err = _config_error(cls.__name__, exc)
        raise ModelFileError(
            f"invalid model parameters: {err}", file=path, field="params"
        ) from None
    except (TypeError, ValueError) as exc:
        raise ModelFileError(
            "invalid model parameters", file=path, field="params", found=str(exc)
        ) from None


def _user_matrix(
    arrays: dict[str, np.ndarray], n_items: int, path: Path
) -> tuple[np.ndarray, sp.csr_matrix]:
    def bad(field: str, message: str, found: object = None) -> ModelFileError:
        return ModelFileError(message, file=path, field=field, found=found)

    missing = [k for k in USER_DATA_KEYS if k not in arrays]
    if missing:
        raise bad(missing[0], "the file says it holds user data but lacks this array")
    uids, data, ind, ptr, shape = (arrays.pop(k) for k in USER_DATA_KEYS)
    if uids.ndim != 1 or uids.dtype.kind not in "iuU":
        raise bad("user_ids", "user ids must be a 1-D integer or text array", str(uids.dtype))
    if shape.shape != (2,) or shape.dtype.kind not in "iu":
        raise bad("ui_shape", "must be two integers", shape.tolist())
    n_rows, n_cols = int(shape[0]), int(shape[1])
    if n_rows != len(uids) or n_cols != n_items:
        raise bad("ui_shape", "does not match the user and item ids", (n_rows, n_cols))
    if ptr.ndim != 1 or ptr.dtype.kind not in "iu" or len(ptr) != n_rows + 1:
        raise bad("ui_indptr", "must hold one offset per user plus one", ptr.shape)
    if ind.ndim != 1 or ind.dtype.kind not in "iu" or data.ndim != 1 or data.dtype.kind != "f":
        raise bad("ui_indices", "indices must be 1-D integers and values 1-D floats")
    if len(ind) != len(data) or (len(ptr) and (ptr[0] != 0 or ptr[-1] != len(ind))):
        raise bad("ui_indptr", "offsets do not match the stored interactions")
    if np.any(np.diff(ptr.astype(np.int64)) < 0):
        raise bad("ui_indptr", "offsets must not decrease")
    if len(ind) and (ind.min() < 0 or ind.max() >= n_items):
        raise bad("ui_indices", "item index out of range", int(ind.max()))
    if not np.isfinite(data).all():
        raise bad("ui_data", "interaction values must be finite")
    if not _unique(uids):
        raise bad("user_ids", "user ids must be unique")
    m = sp.csr_matrix(
        (data.astype(np.float32), ind.astype(np.int32), ptr.astype(np.int64)),
        shape=(n_rows, n_cols),
    )
    m.sum_duplicates()
    m.sort_indices()
    return uids, m


def _unique(a: np.ndarray) -> bool:
    return len(np.unique(a)) == len(a)


def load_model(
    path: str | Path, *, verify: bool = True, max_bytes: int | None = None
) -> Recommender:
    """Load a model saved with :meth:`~privrec.models.base.Recommender.save`, defensively.

    Parameters
    ----------
    path
        The ``.npz`` file.
    verify
        Re-verify a private model's guarantee (ε from the stored events, consistency with the
        parameters). Leave on; ``False`` exists for forensics on a file that fails, and
        :meth:`~privrec.privacy.guarantee.PrivacyGuarantee.explain` still verifies before
        printing.
    max_bytes
        Cap on the decompressed size of the arrays (default :func:`max_model_bytes`).

    Raises
    ------
    ModelFileError
        Anything wrong with the file; :class:`~privrec.errors.ModelFileTooLargeError` for
        sizes, :class:`~privrec.errors.GuaranteeMismatchError` for a guarantee its records do
        not support.
    """
    from privrec.models.base import _empty_csr
    from privrec.models.private import PrivateRecommender
    from privrec.models.registry import model_class

    path = Path(path)
    if not path.exists():
        raise DataError("model file not found", file=path)
    if not path.is_file():
        raise DataError("model path is not a file", file=path)
    meta, arrays = _Reader(path, max_model_bytes(max_bytes)).read_all()
    name = meta["model"]
    cls = model_class(name)
    if cls is None:
        from privrec.models.registry import available_models

        raise ModelFileError(
            "unknown model type",
            file=path,
            field="model",
            expected=" | ".join(available_models()),
            found=name,
        )
    cfg = _strict_params(cls, meta["params"], path)
    model = cls.from_config(cfg)
    private = isinstance(model, PrivateRecommender)
    item_ids = arrays.pop("item_ids", None)
    if item_ids is None or item_ids.ndim != 1 or item_ids.dtype.kind not in "iuU":
        raise ModelFileError(
            "the item catalogue must be a 1-D integer or text array", file=path, field="item_ids"
        )
    if not _unique(item_ids):
        raise ModelFileError("item ids must be unique", file=path, field="item_ids")
    n_items = len(item_ids)
    has_user_data = bool(meta.get("has_user_data", True))
    if has_user_data:
        user_ids, um = _user_matrix(arrays, n_items, path)
    else:
        stray = [k for k in USER_DATA_KEYS if k in arrays]
        if stray and meta["format_version"] >= 2:
            raise ModelFileError(
                "the file says it holds no user data but carries user arrays",
                file=path,
                field=stray[0],
            )
        for k in stray:  # version-1 files stored empty placeholders (and, wrongly, user ids)
            arrays.pop(k)
        user_ids, um = np.zeros(0, dtype=item_ids.dtype), _empty_csr((0, n_items))
    state = {}
    for k, v in arrays.items():
        if not k.startswith("state_"):
            raise ModelFileError("unexpected array", file=path, field=k)
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise ModelFileError("model arrays must be finite", file=path, field=k)
        state[k.removeprefix("state_")] = v
    model.item_ids_ = item_ids
    model.user_ids_ = user_ids
    model.user_items_ = um
    model._released_only = not has_user_data
    model._catalogue_source = "file"
    try:
        model._set_state(state)
        model._check_state()
        model._set_extra_meta(meta.get("extra", {}))
    except DataError as exc:
        raise _refile(exc, path) from None
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        raise ModelFileError(
            "malformed privacy guarantee",
            file=path,
            field="extra." + ".".join(str(p) for p in err["loc"]),
            found=err.get("msg"),
        ) from None
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise ModelFileError(
            "the model's arrays or metadata are incomplete or malformed",
            file=path,
            field="state",
            found=f"{type(exc).__name__}: {exc}",
        ) from None
    if private and verify:
        from privrec.privacy.verify import check_against_params

        try:
            model.guarantee_.verify()  # type: ignore[attr-defined]
            check_against_params(model.guarantee_, meta["params"])  # type: ignore[attr-defined]
        except DataError as exc:
            raise _refile(exc, path) from None
    _smoke(model, path)
    return model


def _refile(exc: DataError, path: Path) -> DataError:
    """The same typed error, naming the file (model hooks raise it without one)."""
    cls = type(exc) if isinstance(exc, ModelFileError) else ModelFileError
    return cls(exc.message, file=path, field=exc.field, expected=exc.expected, found=exc.found)


def _smoke(model: Recommender, path: Path) -> None:
    """Score one empty history: a file that loads must also serve."""
    from privrec.models.base import _empty_csr

    try:
        items, _ = model.recommend_history(_empty_csr((1, model.n_items_)), k=1)
    except (ValueError, IndexError, TypeError, ArithmeticError, np.linalg.LinAlgError) as exc:
        raise ModelFileError(
            "the model cannot score with the stored arrays",
            file=path,
            field="state",
            found=f"{type(exc).__name__}: {exc}",
        ) from None
    if items.shape != (1, min(1, model.n_items_)):
        raise ModelFileError("the model returned a malformed list", file=path, field="state")
