"""The models a service serves: every privrec model file in one directory, with what it promises.

A model is known by its file name without ``.npz`` (``models/dpals-eps1.npz`` → ``dpals-eps1``).
For each the service keeps the loaded model, its file hash (the ledger knows artifacts by it),
its privacy guarantee and, when present, its recorded evaluation: ``<name>.eval.json`` beside
the file, as written by :func:`record_evaluation` (an
:class:`~privrec.evaluation.EvaluationResult` or a list of them, as ``privrec evaluate --json``
writes).

**Recommendations by fold-in.** A request carries the user's own history; the model folds the
user in from it (DPALS: the user's factors are solved from the released item factors and the
history alone — joint DP) and returns the top items. Nothing of the request is kept: the history
lives in local variables of one call and is never logged, stored or cached.

Models without a differential-privacy guarantee are listed but not served unless the service is
started with ``allow_non_private`` (their files and answers may reveal training users).

**Signed files only, with a verify key.** Started with ``verify_key`` (``privrec serve
--verify-key signing.pub``), the store loads a file only if it carries a valid Ed25519 signature
by that key, checked by :func:`~privrec.models.persistence.load_model` before anything in the
file is parsed. At start a file that fails is fatal (:class:`~privrec.errors.ServeConfigError`
naming it): a service told to serve only signed models must not come up serving fewer than
the operator put there without saying so. Later, when the directory changes, a new or replaced
file that fails is refused and listed under ``rejected``; a model already served under that id
keeps being served (its old, verified bytes stay in memory), so a bad upload loses nothing.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privrec.errors import (
    DataError,
    PrivacyWarning,
    PrivrecError,
    ServeConfigError,
    SignatureError,
    UnknownModelError,
)
from privrec.governance.reading import file_sha256
from privrec.serve.foldin import Kernel, kernel_for

__all__ = [
    "ModelStore",
    "ServedModel",
    "record_evaluation",
    "rejection_reason",
    "sanitize_evaluation",
]

log = logging.getLogger("privrec.serve")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_GROUP = re.compile(r"^(Q\d+)")


def _coarse(v: Any) -> Any:
    """A metric to two decimals (``None`` and non-numbers unchanged)."""
    return round(float(v), 2) if isinstance(v, int | float) and not isinstance(v, bool) else v


def sanitize_evaluation(result: dict[str, Any]) -> dict[str, Any]:
    """What the API shows of a recorded evaluation: mean metrics and per-activity-group Recall/NDCG.

    Evaluations are computed on held-out data and are not differentially private. The service
    drops what pins down individuals: the exact history range of each group (the heaviest
    group's maximum is one person's count) and the exact numbers of users — and shows every
    metric to two decimals, because a mean over n users at full precision (0.6833 = 41/60) gives
    n away. This blurs the counts; it is not a DP guarantee (see docs/serve.md).
    """
    groups = []
    for g in result.get("per_group", []) or []:
        label = str(g.get("group", ""))
        m = _GROUP.match(label)
        groups.append(
            {
                "group": m.group(1) if m else label.split(" ")[0],
                **{
                    k: _coarse(v)
                    for k, v in g.items()
                    if k.startswith(("recall@", "ndcg@")) and isinstance(v, int | float | None)
                },
            }
        )
    metrics = {
        name: {str(k): _coarse(v) for k, v in values.items()}
        for name, values in dict(result.get("metrics", {})).items()
        if name in ("recall", "ndcg", "precision", "hitrate", "map", "mrr", "coverage")
    }
    return {
        "protocol": result.get("protocol"),
        "on": result.get("on"),
        "k": list(result.get("k", [])),
        "metrics": metrics,
        "per_group": groups,
    }


def record_evaluation(model_path: str | Path, result: Any) -> Path:
    """Write ``result`` (an ``EvaluationResult`` or its dict) beside the model as ``<name>.eval.json``."""
    path = Path(model_path)
    data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    out = path.with_name(path.name.removesuffix(".npz") + ".eval.json")
    out.write_text(json.dumps(data, indent=2, default=float), encoding="utf-8")
    return out


def _guarantee(model: Any) -> Any:
    g = getattr(model, "guarantee_", None)
    return g if g is not None and hasattr(g, "explain") and hasattr(g, "epsilon") else None


@dataclass
class ServedModel:
    """One loaded model file and everything the listing shows about it."""

    id: str
    path: Path
    model: Any
    file_hash: str
    guarantee: Any
    evaluation: dict[str, Any] | None

    @property
    def signature(self) -> Any:
        """The file's :class:`~privrec.models.signing.FileSignature` (``None``: not signed);
        ``verified`` only when the service checked it against its verify key."""
        return getattr(self.model, "file_signature_", None)

    def signature_summary(self) -> dict[str, Any] | None:
        """What the API shows of the signature: the signer's fingerprint and whether it was
        checked (an unchecked fingerprint is only what the file claims)."""
        sig = self.signature
        if sig is None:
            return None
        return {"signer": sig.fingerprint, "verified": bool(sig.verified)}

    def __post_init__(self) -> None:
        ids = np.asarray(self.model.item_ids_)
        self.item_ids: list[Any] = [v.item() if isinstance(v, np.generic) else v for v in ids]
        self._index = {str(v): i for i, v in enumerate(self.item_ids)}
        # an int in a history names the item whose id prints as it does (str(5) == "5"): the same
        # lookup as str(v) without formatting every int of every request
        self._int_index = {int(s): i for s, i in self._index.items() if _is_int_text(s)}
        self.n_items = len(self.item_ids)
        self.kernel: Kernel = kernel_for(self.model)

    @property
    def private(self) -> bool:
        """A guarantee, unseeded noise, and nothing in the file the guarantee does not cover
        (a file saved with its training users is no private release, whatever its ε)."""
        return (
            self.guarantee is not None
            and not bool(getattr(self.guarantee, "seeded_noise", False))
            and bool(getattr(self.model, "_released_only", True))
        )

    @property
    def kind(self) -> str:
        return str(getattr(type(self.model), "name", type(self.model).__name__))

    def guarantee_summary(self) -> dict[str, Any] | None:
        g = self.guarantee
        if g is None:
            return None
        unit = getattr(g, "unit", None)
        accountant = getattr(g, "accountant", None)
        return {
            "epsilon": float(g.epsilon),
            "delta": float(g.delta),
            "unit": getattr(unit, "value", unit),
            "accountant": getattr(accountant, "value", accountant),
            "mechanism": getattr(g, "mechanism", None),
            "seeded_noise": bool(getattr(g, "seeded_noise", False)),
            "explanation": str(g.explain()),
        }

    def recommend(self, history: list[Any], k: int) -> tuple[list[dict[str, Any]], int]:
        """Top-``k`` items for a user given only their own ``history`` (external item ids).

        Unknown ids in the history are ignored (their number is returned). Items the model
        does not release (e.g. DPALS items off the private head, score ``-inf``) are never
        recommended; seen items are left out.
        """
        pos: list[int] = []
        unknown = 0
        by_int, by_str = self._int_index, self._index
        for v in history:
            p = by_int.get(v) if type(v) is int else by_str.get(str(v))
            if p is None:
                unknown += 1
            else:
                pos.append(p)
        known = np.array(sorted(set(pos)), dtype=np.int64)
        items, scores = self.kernel(known, min(k, self.n_items))
        ids = self.item_ids
        out = [
            {"item": ids[i], "score": round(s, 6)}
            for i, s in zip(items.tolist(), scores.tolist(), strict=True)
            if i >= 0 and math.isfinite(s)
        ]
        return out, unknown


def _is_int_text(s: str) -> bool:
    try:
        return str(int(s)) == s
    except ValueError:
        return False


class ModelStore:
    """Every model file of a directory, loaded once; listing re-scans when the directory changes."""

    def __init__(
        self,
        directory: str | Path,
        *,
        allow_non_private: bool = False,
        verify_key: Any = None,
    ) -> None:
        self.directory = Path(directory)
        self.allow_non_private = allow_non_private
        #: an Ed25519 public key (or its PEM file): every file loaded must be signed by it
        self.verify_key: Any = None
        self.signer: str | None = None
        if verify_key is not None:
            from privrec.models.signing import fingerprint, load_verify_key

            self.verify_key = load_verify_key(verify_key)  # a bad key file fails here
            self.signer = fingerprint(self.verify_key)
        self._lock = threading.Lock()
        self._models: dict[str, ServedModel] = {}
        self.rejected: dict[str, str] = {}
        self._stamp: tuple[float, int] | None = None
        self._refresh(starting=True)

    def _dir_stamp(self) -> tuple[float, int]:
        st = self.directory.stat()
        return (st.st_mtime, len(list(self.directory.glob("*"))))

    def refresh(self) -> None:
        """Load new or changed files, drop removed ones (cheap when nothing changed).

        A new or changed file that cannot be loaded (or, with a verify key, is not signed by
        it) is listed under :attr:`rejected`; a model already served under its id stays served.
        """
        self._refresh(starting=False)

    def _refresh(self, *, starting: bool) -> None:
        from privrec.models import load_model

        stamp = self._dir_stamp()
        with self._lock:
            if stamp == self._stamp:
                return
            seen = set()
            paths = sorted(self.directory.glob("*.npz"))
            for path in paths:
                mid = path.name.removesuffix(".npz")
                if not _ID.match(mid):
                    self.rejected[path.name] = "file name is not a valid model id"
                    continue
                seen.add(mid)
                digest = file_sha256(path)
                current = self._models.get(mid)
                if current is not None and current.file_hash == digest:
                    current.evaluation = _read_eval(path)
                    self.rejected.pop(path.name, None)  # a refused replacement was put back
                    continue
                try:
                    model = load_model(path, verify_key=self.verify_key)
                except SignatureError as exc:
                    if starting:
                        raise ServeConfigError(
                            f"refusing to start: model file {str(path)!r} is not signed by the "
                            f"verify key {self.signer} ({exc.message}"
                            + (f"; signed by {exc.found}" if exc.found else "")
                            + "); sign it with that key's signing.key (`privrec privacy sign`) "
                            "or move it out of the models directory"
                        ) from None
                    self.rejected[path.name] = rejection_reason(exc)
                    kept = "; the model loaded before stays served" if current else ""
                    log.warning("model %s refused: signature check failed%s", path.name, kept)
                    continue
                except PrivrecError as exc:
                    self.rejected[path.name] = rejection_reason(exc)
                    log.warning("model %s not served: %s", path.name, rejection_reason(exc))
                    continue
                sm = ServedModel(mid, path, model, digest, _guarantee(model), _read_eval(path))
                if not sm.private and not self.allow_non_private:
                    warnings.warn(
                        f"model {mid!r} is no private release (no guarantee, seeded noise, or "
                        "its training users stored in the file): listed, not served (start the "
                        "service with --allow-non-private to serve it)",
                        PrivacyWarning,
                        stacklevel=2,
                    )
                self._models[mid] = sm
                self.rejected.pop(path.name, None)
            for gone in set(self._models) - seen:
                del self._models[gone]
            for name in set(self.rejected) - {p.name for p in paths}:
                del self.rejected[name]  # a refused file that was removed
            self._stamp = stamp

    def list(self) -> list[ServedModel]:
        self.refresh()
        return [self._models[k] for k in sorted(self._models)]

    def get(self, model_id: str) -> ServedModel:
        sm = self._models.get(model_id)
        if sm is None:
            self.refresh()
            sm = self._models.get(model_id)
        if sm is None:
            raise UnknownModelError("no model of that name is served here")
        return sm

    def servable(self, sm: ServedModel) -> bool:
        return sm.private or self.allow_non_private


_PATHS = re.compile(r"(?:[A-Za-z]:)?[\\/](?:[^\\/\s'\"]*[\\/])+")


def rejection_reason(exc: PrivrecError) -> str:
    """Why a model file was refused, fit to show any key holder: the error's class and sentence.

    Library errors name the file by its full path (``file '/srv/models/x.npz': …``) and may quote
    an OS error: that is the server's layout, not the caller's business. The listing already
    names the file, so the reason keeps the error class and, for data errors, their one-sentence
    ``message`` (never ``found``) with any directory part cut off.
    """
    text = exc.message if isinstance(exc, DataError) else ""
    text = _PATHS.sub("", text)[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_eval(path: Path) -> dict[str, Any] | None:
    side = path.with_name(path.name.removesuffix(".npz") + ".eval.json")
    if not side.exists():
        return None
    try:
        raw = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(raw, list):
        raw = raw[0] if raw else None
    return sanitize_evaluation(raw) if isinstance(raw, dict) else None
