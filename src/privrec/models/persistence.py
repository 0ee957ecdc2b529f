"""Model files: one ``.npz`` (a zip of ``.npy`` arrays) plus JSON metadata — no pickle.

Writing. A private model's file holds only what its guarantee releases and what a user's own
side needs to be served: the item catalogue, the released arrays (``state_*``), the
hyper-parameters and the guarantee. No user ids, no user count, no training structure —
``user_ids`` / ``ui_*`` are written only for non-private models, or for a private one when
``include_user_data=True`` is asked for explicitly (which warns: that file is then outside
the guarantee). The metadata records the dtype and shape of every array.

Reading (:func:`load_model`) treats the file as hostile until proven otherwise; nothing is
decompressed until every check that the headers allow has passed
(:mod:`privrec.models.npz_reader`, :mod:`privrec.models.file_layout`):

1. the archive's member names must be ones privrec writes, the declared sizes must fit the
   limit (``max_bytes``, default 4 GiB or ``$PRIVREC_MAX_MODEL_BYTES``) and the compressed
   sizes the file on disk (no overlapping members);
2. the metadata (itself size- and ratio-bounded) is a JSON object of the expected shape;
   hyper-parameters are validated strictly (a string where a number belongs is an error, not
   coerced);
3. each member's ``.npy`` header is parsed without decompressing its data: plain numeric or
   text dtypes only, shape and dtype equal to what the metadata declares, the byte count
   equal to the header's, and the running total within the limit;
4. every declared shape is checked against the model's layout — what a model of this class,
   these parameters and this catalogue size holds (DPALS factors are ``(n_items, k)``, head
   items at most ``n_items``, the user arrays one CSR matrix over the catalogue) — and every
   member's decompression ratio is bounded (64:1, except arrays that are legitimately mostly
   zeros and whose size the layout pins): a file declaring huge arrays of zeros, or a giant
   catalogue, stops at its headers. Arrays the model does not read are never decompressed;
5. the model checks its own arrays' contents (index ranges, finiteness, uniqueness) and a
   private model's guarantee is re-verified: ε recomputed from the stored events, δ / unit /
   accountant consistent with the parameters (:mod:`privrec.privacy.verify`);
6. the loaded model scores one empty history, so a file that loads also works.

Before all of that, with ``verify_key``, the file's Ed25519 signature must be valid for that
key (:mod:`privrec.models.signing`): the file is read once, the signature checked over its raw
bytes, and those same bytes parsed — a file that is unsigned, signed by another key or changed
in any byte is refused with :class:`~privrec.errors.SignatureError` before any zip structure is
parsed or any member decompressed. Steps 1–6 prove that a file is well formed and that its ε
follows from its stored events; only the signature shows who produced it, so only it catches a
*consistent* forgery (noise parameters and ε edited together, factors swapped).

Every failure is a :class:`~privrec.errors.ModelFileError` (a ``DataError``) naming the file
and the field.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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
    OutputPathError,
    PrivacyWarning,
)
from privrec.models.file_layout import check_layout, generic_sparse
from privrec.models.npz_reader import ENV_MAX as _ENV_MAX
from privrec.models.npz_reader import FORMAT, KINDS, ArchiveReader, Header

if TYPE_CHECKING:
    from privrec.models.base import Recommender
    from privrec.models.signing import FileSignature, SigningKey, VerifyKey

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT",
    "FORMAT_VERSION",
    "USER_DATA_KEYS",
    "load_model",
    "max_model_bytes",
    "save_model",
]

FORMAT_VERSION = 2
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
#: Default cap on the decompressed size of a model file's arrays.
DEFAULT_MAX_BYTES = 4 << 30
#: Arrays that describe training users; never written for a private model by default.
USER_DATA_KEYS = ("user_ids", "ui_data", "ui_indices", "ui_indptr", "ui_shape")
#: The metadata fields :func:`save_model` writes; a private file with others carries data its
#: guarantee does not cover (see :func:`_uncovered`).
META_KEYS = frozenset(
    {
        "format",
        "format_version",
        "model",
        "class",
        "privrec_version",
        "params",
        "extra",
        "has_user_data",
        "arrays",
    }
)


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


def npz_path(path: str | Path) -> Path:
    """Where ``save_model(path)`` writes: ``path`` with ``.npz`` appended unless it ends so."""
    p = Path(path)
    if p.suffix != ".npz":
        p = p.with_suffix(p.suffix + ".npz") if p.suffix else p.with_suffix(".npz")
    return p


@contextmanager
def atomic_output(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` only when the block
    succeeds — a full disk or an error never leaves a cut-off file or destroys the old one.

    ``durable``: the written file and the rename are also fsynced (file, then folder), so a
    power loss cannot undo a file whose content others already acted on (a charge on record).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name.lstrip('.')}.{os.getpid()}.tmp")
    # the name is predictable: a stale temp file or a link planted there (a shared folder) is
    # removed, never followed, and the temp file is created afresh before anyone writes to it
    try:
        tmp.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666))
    except OSError as exc:
        raise OutputPathError(
            f"cannot create a temporary file beside {str(path)!r}: {exc.strerror or exc}"
        ) from None
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
        if durable:
            sync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def sync_folder(folder: Path) -> None:
    """Make the folder's entries (a new, renamed or removed file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_model(
    model: Recommender,
    path: str | Path,
    *,
    include_user_data: bool | None,
    signing_key: SigningKey | None = None,
) -> Path:
    """Write ``model`` (see :meth:`privrec.models.base.Recommender.save`)."""
    from privrec import __version__
    from privrec.models.private import PrivateRecommender

    model._check_fitted()
    signer = None
    if signing_key is not None:  # read (and its file mode checked) before anything is written
        from privrec.models.signing import load_signing_key

        signer = load_signing_key(signing_key)
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
        if value.dtype.kind not in KINDS:
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
    out = npz_path(path)
    with atomic_output(out) as tmp:  # written and signed beside the target, then renamed
        with tmp.open("wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        if signer is not None:
            from privrec.models.signing import sign_file

            sign_file(tmp, signer)
    return out


# --------------------------------------------------------------------------------- reading
def _strict_params(cls: type[Recommender], params: dict[str, Any], path: Path) -> Any:
    """The model's config from stored parameters, validated strictly (no str → number coercion)."""
    from privrec.models.base import _config_error

    # a parameter added later: files saved before it were trained with the old behaviour, which
    # its default may no longer be (e.g. DPALS.adaptive_count_share)
    params = {**getattr(cls, "params_before_added", {}), **params}
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


def _model_type(name: str, path: Path) -> type[Recommender]:
    from privrec.models.registry import available_models, model_class

    cls = model_class(name)
    if cls is None:
        raise ModelFileError(
            "unknown model type",
            file=path,
            field="model",
            expected=" | ".join(available_models()),
            found=name,
        )
    return cls


def _plan_reads(
    path: Path, meta: dict[str, Any], headers: Mapping[str, Header], cls: Any, cfg: Any
) -> dict[str, bool]:
    """Check every header against the model's layout; the members to inflate (→ ``sparse``).

    Runs before any array is decompressed: the catalogue's header gives ``n_items``, the
    model class its layout from the validated parameters (:meth:`Recommender._file_layout`),
    and arrays the model does not read are never inflated.
    """
    ids = headers.get("item_ids")
    if ids is None or len(ids.shape) != 1 or ids.dtype.kind not in "iuU":
        raise ModelFileError(
            "the item catalogue must be a 1-D integer or text array", file=path, field="item_ids"
        )
    n_items = ids.shape[0]
    wanted = {"item_ids": False}
    if bool(meta.get("has_user_data", True)):
        wanted |= _user_headers(headers, n_items, path)
    else:
        stray = [k for k in USER_DATA_KEYS if k in headers]
        if stray and meta["format_version"] >= 2:
            raise ModelFileError(
                "the file says it holds no user data but carries user arrays",
                file=path,
                field=stray[0],
            )
        # version-1 files stored empty placeholders (and, wrongly, user ids): never inflated
    state = {
        k.removeprefix("state_"): (h.shape, h.dtype.kind)
        for k, h in headers.items()
        if k.startswith("state_")
    }
    layout = cls._file_layout(cfg, n_items)
    if layout is None:
        sparse, keys = generic_sparse(state, n_items), list(state)
    else:
        sparse = check_layout(layout, state, path)
        keys = [k for k in layout.arrays if k in state]  # arrays it does not use stay packed
    return wanted | {f"state_{k}": k in sparse for k in keys}


def _unread(headers: Mapping[str, Header], wanted: Mapping[str, bool]) -> list[str]:
    """Members the model does not read: left packed, but still in the file."""
    return sorted(k for k in headers if k not in wanted)


def _check_member(path: Path) -> Callable[[str, np.ndarray], None]:
    """Contents checks run as soon as a member is inflated, before the next one is."""

    def check(key: str, arr: np.ndarray) -> None:
        # the catalogue pins the size of the arrays exempt from the ratio bound (factors
        # that are zero off the head): a catalogue of repeated ids — cheap to compress,
        # text ids most of all — is refused before gigabytes of zeros are inflated for it
        if key == "item_ids" and not _unique(arr):
            raise ModelFileError("item ids must be unique", file=path, field="item_ids")

    return check


def _uncovered(cls: type[Recommender], meta: Mapping[str, Any], unread: list[str]) -> list[str]:
    """What a private model's file holds beyond what its guarantee covers and the model reads.

    A private file holds the catalogue, the released arrays and the guarantee. Anything else —
    arrays the model does not read (a smuggled ``state_user_factors``), user arrays a version-1
    file carries, metadata fields privrec does not write — is outside the guarantee; it is not
    loaded, but whoever publishes the file publishes it.
    """
    from privrec.models.private import PrivateRecommender

    out = [f"array {k!r}" for k in unread]
    out += [f"metadata field {k!r}" for k in sorted(set(meta) - META_KEYS)]
    extra = meta.get("extra", {})
    if cls._extra_meta is PrivateRecommender._extra_meta and isinstance(extra, Mapping):
        out += [f"metadata field 'extra.{k}'" for k in sorted(set(extra) - {"guarantee"})]
    return out


def _user_headers(headers: Mapping[str, Header], n_items: int, path: Path) -> dict[str, bool]:
    """The stored users' arrays must describe one CSR matrix over the catalogue."""
    missing = [k for k in USER_DATA_KEYS if k not in headers]
    if missing:
        raise ModelFileError(
            "the file says it holds user data but lacks this array", file=path, field=missing[0]
        )
    shape = {k: headers[k].shape for k in USER_DATA_KEYS}
    n_users = shape["user_ids"][0] if len(shape["user_ids"]) == 1 else -1
    nnz = shape["ui_indices"][0] if len(shape["ui_indices"]) == 1 else -1
    want = {
        "user_ids": (n_users,),
        "ui_indptr": (n_users + 1,),
        "ui_indices": (nnz,),
        "ui_data": (nnz,),
        "ui_shape": (2,),
    }
    for key, expected in want.items():
        if min(expected) < 0 or shape[key] != expected:
            raise ModelFileError(
                "user arrays disagree in shape",
                file=path,
                field=key,
                expected=str(expected),
                found=str(shape[key]),
            )
    if nnz > n_users * n_items:
        raise ModelFileError(
            "more stored interactions than users × items",
            file=path,
            field="ui_indices",
            expected=f"<= {n_users * n_items:,}",
            found=nnz,
        )
    # interaction values are often all ones (implicit feedback): pinned to the indices' count
    return {k: k == "ui_data" for k in USER_DATA_KEYS}


def _unique(a: np.ndarray) -> bool:
    return len(np.unique(a)) == len(a)


def load_model(
    path: str | Path,
    *,
    verify: bool = True,
    max_bytes: int | None = None,
    verify_key: VerifyKey | None = None,
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
    verify_key
        The signer's Ed25519 public key (or the path of its ``signing.pub``): the file must
        carry a valid signature by it, checked before anything else is read. Without it a
        signed file loads as before, and :attr:`~privrec.models.base.Recommender.file_signature_`
        shows the signer it *claims* (unchecked).

    Raises
    ------
    ModelFileError
        Anything wrong with the file; :class:`~privrec.errors.ModelFileTooLargeError` for
        sizes, :class:`~privrec.errors.GuaranteeMismatchError` for a guarantee its records do
        not support, :class:`~privrec.errors.SignatureError` (with ``verify_key``) for a file
        that is unsigned, signed by another key, or changed since it was signed.
    """
    from privrec.models.base import _empty_csr
    from privrec.models.private import PrivateRecommender

    path = Path(path)
    if not path.exists():
        raise DataError("model file not found", file=path)
    if not path.is_file():
        raise DataError("model path is not a file", file=path)
    found: dict[str, Any] = {}

    def plan(meta: dict[str, Any], headers: Mapping[str, Header]) -> dict[str, bool]:
        # the class and strict parameters first: the layout the headers must fit follows
        found["cls"] = cls = _model_type(meta["model"], path)
        found["cfg"] = cfg = _strict_params(cls, meta["params"], path)
        wanted = _plan_reads(path, meta, headers, cls, cfg)
        found["unread"] = _unread(headers, wanted)
        return wanted

    limit = max_model_bytes(max_bytes)
    data, signature = _signed_bytes(path, verify_key, limit)
    meta, arrays = ArchiveReader(path, limit, data, _check_member(path)).read(plan)
    cls: type[Recommender] = found["cls"]
    cfg = found["cfg"]
    model = cls.from_config(cfg)
    private = isinstance(model, PrivateRecommender)
    item_ids = arrays.pop("item_ids")
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
    uncovered = _uncovered(cls, meta, found["unread"]) if private else []
    # what the file holds outside the guarantee (``privrec privacy verify`` fails on it); an
    # attribute of loaded models only, so not declared on Recommender
    setattr(model, "file_uncovered_", tuple(uncovered))  # noqa: B010
    if uncovered:
        warnings.warn(
            f"this private {cls.__name__} file holds data its privacy guarantee does not cover "
            f"({', '.join(uncovered)}; not loaded): privrec never writes it into a private "
            "model — the file was edited or made by other software; do not publish it "
            "(`privrec privacy verify` fails on it)",
            PrivacyWarning,
            stacklevel=3,
        )
    if private and has_user_data:  # said on saving; said again to whoever loads and uses it
        warnings.warn(
            f"this private {cls.__name__} file also holds its training users' ids and "
            "interactions (saved with include_user_data=True): that data is outside the model's "
            "privacy guarantee — keep the file private; `privrec serve` refuses it",
            PrivacyWarning,
            stacklevel=3,
        )
    model.file_signature_ = signature
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


def _signed_bytes(
    path: Path, verify_key: VerifyKey | None, limit: int
) -> tuple[bytes | None, FileSignature | None]:
    """With a key: the file's bytes, read once and signature-checked (the reader parses these
    very bytes, so nothing can change between check and use). Without: only the signature
    block the file claims, and ``None`` (the reader opens the file itself)."""
    from privrec.models.signing import load_verify_key, read_signature, verify_bytes

    if verify_key is None:
        return None, read_signature(path)
    key = load_verify_key(verify_key)
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise ModelFileTooLargeError(
                    f"the model file has {size:,} bytes, above the limit of {limit:,} bytes "
                    f"(raise it with max_bytes= or ${_ENV_MAX})",
                    file=path,
                    field="<file>",
                )
            data = fh.read(limit + 1)
    except OSError as exc:
        raise DataError("model file cannot be read", file=path, found=str(exc)) from None
    if len(data) > limit:  # grew while being read
        raise ModelFileTooLargeError("the model file grew while it was read", file=path)
    return data, verify_bytes(data, key, path)


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
