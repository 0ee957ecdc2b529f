"""What a model file's arrays may look like, checked from their ``.npy`` headers alone.

A model file is hostile until proven otherwise (:mod:`privrec.models.persistence`). Checking
an array's shape against the model only after it was decompressed lets a small file with
consistent metadata — declaring huge arrays full of zeros — make the loader allocate
gigabytes before it fails. So, before any array's data is read:

* every model class states its file's layout (:meth:`Recommender._file_layout
  <privrec.models.base.Recommender._file_layout>`): the shape each saved array must have,
  from the (already validated) hyper-parameters and the catalogue size ``n_items``; named
  dimensions (``"h"`` head items, ``"nnz"`` stored entries) must agree across arrays and stay
  within their bounds. :func:`check_layout` compares the declared shapes with it.
* every member's decompression ratio (uncompressed ÷ compressed size, from the zip
  directory) is bounded by :data:`MAX_RATIO`, except for arrays the layout marks ``sparse``:
  arrays that are legitimately mostly zeros and whose size the layout pins to the
  catalogue, the parameters and other, ratio-bounded arrays (DPALS factors are zero off the
  head; implicit-feedback interaction values are all ones).

Why 64: measured on real saved models of every built-in kind (ml-100k, ml-1m-implicit-r3,
gowalla-lightgcn; ``docs/privacy.md``, "Verifying a guarantee"), no array outside the
``sparse`` ones compresses more than 5.3:1 — ids, offsets and indices 1.8–5.3, counts
2.4–3.9, released noise and factors 1.1 — while a run of zeros compresses about 1,000:1. 64
leaves twelve times the largest measured ratio as headroom and caps what a crafted member can
make the loader allocate at 64 times its size on disk. Text ids are stored as UTF-32 padded to
the longest id, which deflate undoes: ISBN-like ids compress 6:1, URL-like ones 21:1, and 68–80:1
when one id is several times longer than the rest — so text arrays get 4 × 64 = 256:1. The
``sparse`` arrays reached 986:1 (all-ones interaction values) and 106:1 (gowalla DPALS factors
at ε = 1, a 1 % head).

So whatever a crafted file declares, the loader allocates at most 64 × the compressed size of
the ratio-bounded arrays plus what a genuine model of that catalogue and those parameters
holds, within the overall byte cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from privrec.errors import ModelFileError

__all__ = [
    "MAX_RATIO",
    "RATIO_SLACK",
    "TEXT_FACTOR",
    "ArraySpec",
    "FileLayout",
    "check_layout",
    "check_ratio",
    "generic_sparse",
]

#: Largest uncompressed ÷ compressed size allowed for a member not marked ``sparse``.
MAX_RATIO = 64
#: Bytes a member may exceed ``MAX_RATIO ×`` its compressed size by (tiny arrays and headers
#: compress poorly or oddly; 256 members × 64 KiB bounds what this lets through at 16 MiB).
RATIO_SLACK = 64 << 10
#: Extra allowance for text arrays (UTF-32, padded to the longest entry): 4 × 64 = 256:1.
TEXT_FACTOR = 4
#: Widest per-item array a model without a stated layout may store mostly zeros (the largest
#: factor count any built-in model accepts).
MAX_GENERIC_WIDTH = 1024

Dim = int | str | None


@dataclass(frozen=True)
class ArraySpec:
    """The expected shape and dtype kinds of one saved array.

    ``shape`` holds, per dimension, an ``int`` (exact), a name (must agree with every other
    use of the name and stay within :attr:`FileLayout.bounds`) or ``None`` (free).
    ``sparse`` exempts the array from the ratio bound; allowed only when its size is pinned
    by ints and names bounded by ratio-checked arrays (never a ``None`` dimension).
    """

    shape: tuple[Dim, ...]
    kinds: str = "f"
    sparse: bool = False
    optional: bool = False


@dataclass(frozen=True)
class FileLayout:
    """The arrays a model's file holds (keys without the ``state_`` prefix) and name bounds."""

    arrays: Mapping[str, ArraySpec]
    bounds: Mapping[str, int] = field(default_factory=dict)


def check_ratio(
    key: str, size: int, compressed: int, path: Path, *, sparse: bool = False, text: bool = False
) -> None:
    """Refuse a member that inflates more than :data:`MAX_RATIO` (a decompression bomb).

    Text arrays get :data:`TEXT_FACTOR` times more: numpy stores every character in four
    bytes and pads every id to the longest one, both of which deflate removes.
    """
    limit = MAX_RATIO * (TEXT_FACTOR if text else 1)
    if sparse or size <= limit * compressed + RATIO_SLACK:
        return
    raise ModelFileError(
        "array compresses implausibly well (a decompression bomb?)",
        file=path,
        field=key,
        expected=f"uncompressed ≤ {limit} × compressed size",
        found=f"{size:,} bytes from {compressed:,} ({size / max(compressed, 1):,.0f}:1)",
    )


def check_layout(
    layout: FileLayout,
    shapes: Mapping[str, tuple[tuple[int, ...], str]],
    path: Path,
) -> set[str]:
    """Check declared ``shapes`` (state key → (shape, dtype kind)) against ``layout``.

    Returns the keys the layout exempts from the ratio bound. Arrays the layout does not list
    are not checked here (the loader skips them unread).
    """
    names: dict[str, tuple[int, str]] = {}
    sparse: set[str] = set()
    for key, spec in layout.arrays.items():
        field_ = f"state_{key}"
        if key not in shapes:
            if spec.optional:
                continue
            raise ModelFileError("the model file lacks an array", file=path, field=field_)
        shape, kind = shapes[key]
        if kind not in spec.kinds:
            raise ModelFileError(
                "array has the wrong dtype kind",
                file=path,
                field=field_,
                expected=spec.kinds,
                found=kind,
            )
        want = tuple("?" if d is None else d for d in spec.shape)
        if len(shape) != len(spec.shape):
            raise ModelFileError(
                "array has the wrong number of dimensions",
                file=path,
                field=field_,
                expected=str(want),
                found=str(shape),
            )
        for dim, got in zip(spec.shape, shape, strict=True):
            if isinstance(dim, int) and got != dim:
                raise ModelFileError(
                    "array shape disagrees with the model's parameters and catalogue",
                    file=path,
                    field=field_,
                    expected=str(want),
                    found=str(shape),
                )
            if isinstance(dim, str):
                bound = layout.bounds.get(dim)
                if bound is not None and got > bound:
                    raise ModelFileError(
                        f"array dimension {dim!r} exceeds what the model's parameters and "
                        "catalogue allow",
                        file=path,
                        field=field_,
                        expected=f"{dim} ≤ {bound:,}",
                        found=str(shape),
                    )
                seen = names.setdefault(dim, (got, field_))
                if seen[0] != got:
                    raise ModelFileError(
                        f"arrays disagree on dimension {dim!r}",
                        file=path,
                        field=field_,
                        expected=f"{dim} = {seen[0]} (from {seen[1]})",
                        found=str(shape),
                    )
    for key, spec in layout.arrays.items():
        pinned = all(
            isinstance(d, int)
            or (
                isinstance(d, str)
                and (
                    d in layout.bounds
                    or any(
                        d in other.shape and not other.sparse and k in shapes
                        for k, other in layout.arrays.items()
                    )
                )
            )
            for d in spec.shape
        )
        if spec.sparse and key in shapes and pinned:
            sparse.add(key)
    return sparse


def generic_sparse(shapes: Mapping[str, tuple[tuple[int, ...], str]], n_items: int) -> set[str]:
    """Ratio exemptions for a model that states no layout (e.g. a plug-in model).

    Only arrays of one row per catalogue item, at most :data:`MAX_GENERIC_WIDTH` wide, may be
    mostly zeros (head-only factors): their size is pinned by the ratio-bounded catalogue.
    """
    return {
        key
        for key, (shape, _) in shapes.items()
        if len(shape) in (1, 2)
        and shape[0] == n_items
        and (len(shape) == 1 or shape[1] <= MAX_GENERIC_WIDTH)
    }
