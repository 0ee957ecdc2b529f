"""The driver of cross-silo training: :class:`Driver` (DPALS) and :class:`EASEDriver` (DPEASE),
with their releases, journal and checkpoints (see :mod:`privrec.secure.silo`)."""

from __future__ import annotations

import io
import json
import math
import os
import time
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from privrec.errors import (
    CheckpointMismatchError,
    ConfigError,
    MessageRejected,
    PeerUnavailable,
    ProtocolAbort,
)
from privrec.models.dp_als import (
    resolve_popularity_blend,
    resolve_regularization,
)
from privrec.models.dp_ease import (
    ease_blend,
    resolve_ease_regularization,
)
from privrec.models.ease import ease_from_gram
from privrec.privacy.events import SpentEvent
from privrec.privacy.guarantee import PrivacyGuarantee
from privrec.privacy.mechanisms import gaussian_event
from privrec.privacy.postprocessing import project_psd, psd_solve
from privrec.privacy.units import PrivacyUnit
from privrec.secure.channel import (
    Channel,
    Identity,
    Listener,
    Roster,
    connect,
)
from privrec.secure.silo_config import (
    AnyConfig,
    SiloConfig,
    SiloEASEConfig,
    _with_noise,
    ease_noise,
    ease_noise_plan,
    head_by_counts,
    load_config,
    noise_plan,
    noise_scale,
    revealed_sigma,
    silo_head,
)
from privrec.secure.silo_results import SiloEASEResult, SiloResult
from privrec.secure.silo_roles import _accept, _Clock, _recv_array, _safe_send
from privrec.secure.silo_stats import unpack_gram, unpack_statistics
from privrec.secure.silo_wire import (
    _NOISE_LIMIT,
    ABORT,
    BYE,
    JOB,
    PARTIAL,
    PLAN,
    PROTOCOL_VERSION,
    Segment,
    _pack,
    decode_fixed,
    fixed_sigma,
    revealed_std,
)

__all__ = ["Driver", "EASEDriver"]


class _DriverBase(ABC):
    """Session, releases and checkpoints shared by the DPALS and DPEASE drivers.

    ``ledger_hook`` (optional) is given each release's labelled events before the release is
    asked of the servers (a privacy ledger checks them against its reservation, tops it up or
    refuses; an exception aborts the run with nothing released). :meth:`planned_events` lists,
    before the first release, exactly the events a complete run records.
    """

    config: AnyConfig

    def __init__(
        self,
        identity: Identity,
        roster: Roster,
        config: AnyConfig,
        *,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        timeout: float = 60.0,
    ) -> None:
        self.identity = identity
        self.roster = roster
        self.config = config
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.resume = resume
        self.timeout = timeout
        self._silos: dict[str, Channel] = {}
        self._servers: dict[str, Channel] = {}
        self._partials: dict[str, np.ndarray] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.spent: list[SpentEvent] = []
        self.round = 0
        self.round_seconds: list[float] = []
        self.solve_seconds: list[float] = []
        self.timings: list[dict[str, float]] = []
        self._state: dict[str, np.ndarray] | None = None
        self.ledger_hook: Callable[[SpentEvent], None] | None = None

    @abstractmethod
    def _planned(self) -> list[SpentEvent]:
        """Every release of a complete run, from the public configuration alone."""

    def planned_events(self, *, remaining: bool = False) -> list[SpentEvent]:
        """Every event a complete run records, labelled as :attr:`spent` labels them (the noise
        is a function of the public configuration only). ``remaining=True``: those not yet in
        the journal — call :meth:`prepare` first when resuming."""
        planned = self._planned()
        if not remaining:
            return planned
        return planned[self._covered(planned) :]

    @abstractmethod
    def _groups(self) -> list[tuple[int, str]]:
        """The plan's releases in groups redone together — ``(number of events, kind)``, the
        kind as the servers count it (DPALS: the counts, then one group per step)."""

    def _covered(self, planned: list[SpentEvent] | None = None) -> int:
        """How many of the plan's events the journal holds, each counted once.

        The journal must be the plan's prefix, except that a group may follow itself again — a
        resumed run redoing a step journalled but not saved before a crash, which the servers
        answer only as one of the configuration's ``retries`` (and the journal counts, so the
        guarantee does) — at most ``retries`` times per kind. Anything else is refused: an
        edited journal would make the guarantee under-report.
        """
        plan = [e.to_dict() for e in (self._planned() if planned is None else planned)]
        journal = [e.to_dict() for e in self.spent]
        bounds, start = [], 0
        for size, kind in self._groups():
            bounds.append((start, start + size, kind))
            start += size
        i = g = 0
        repeats: dict[str, int] = {}
        while i < len(journal):
            if g < len(bounds):
                a, b, _ = bounds[g]
                if journal[i : i + b - a] == plan[a:b]:
                    i, g = i + b - a, g + 1
                    continue
            if g > 0:
                a, b, kind = bounds[g - 1]
                if journal[i : i + b - a] == plan[a:b]:
                    repeats[kind] = repeats.get(kind, 0) + 1
                    i += b - a
                    continue
            raise ConfigError("the journalled releases are not this configuration's plan")
        over = {k: n for k, n in repeats.items() if n > self.config.retries}
        if over:
            raise ConfigError(
                f"the journal repeats {over} releases, more than the configuration's "
                f"{self.config.retries} retries pay for"
            )
        return bounds[g - 1][1] if g else 0

    # ------------------------------------------------------------------ session
    def _open(self) -> None:
        listener = Listener(self.identity, self.roster, timeout=self.timeout)
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="driver-recv")
        try:
            for s in self.roster.names("server"):
                self._servers[s] = connect(
                    self.identity,
                    self.roster,
                    s,
                    timeout=self.timeout,
                    retry_for=max(self.timeout, 30.0),
                )
            silos = set(self.roster.names("silo"))
            while len(self._silos) < len(silos):
                missing = sorted(silos - set(self._silos))
                ch = _accept(listener, max(self.timeout, 30.0), missing)
                if ch.peer not in silos or ch.peer in self._silos:
                    ch.close()
                    raise MessageRejected(f"unexpected connection from {ch.peer!r}")
                self._silos[ch.peer] = ch
        except PeerUnavailable as exc:
            self._close(BYE)
            raise ProtocolAbort("connect", str(exc)) from None
        finally:
            listener.close()

    def _close(self, kind: int) -> None:
        for ch in [*self._silos.values(), *self._servers.values()]:
            _safe_send(ch, self.round, kind, b"")
            ch.close()
        self._silos.clear()
        self._servers.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    @property
    def bytes_sent(self) -> int:
        return sum(ch.bytes_sent for ch in [*self._silos.values(), *self._servers.values()])

    # ------------------------------------------------------------------ one release
    def _release(
        self,
        meta: dict[str, Any],
        arrays: dict[str, np.ndarray],
        segments: list[Segment],
        labels: list[str],
    ) -> np.ndarray:
        c = self.config
        self.round += 1
        r = self.round
        t0 = time.perf_counter()
        dim = sum(s.length for s in segments)
        sigmas = [[s.length, fixed_sigma(s, c.frac_bits)] for s in segments]
        if any(sig > _NOISE_LIMIT for _, sig in sigmas):
            raise ConfigError("noise too large for the 64-bit fixed-point sum; lower frac_bits")
        events = [
            SpentEvent(label, gaussian_event(s.z))
            for s, label in zip(segments, labels, strict=True)
        ]
        if self.ledger_hook is not None:  # before anything is asked of the servers
            for e in events:
                self.ledger_hook(e)
        v = PROTOCOL_VERSION
        job = _pack(
            {**meta, "frac_bits": c.frac_bits, "n_items": c.n_items, "dim": dim, "protocol": v},
            arrays,
        )
        n_head = int(arrays["head"].size) if "head" in arrays else 0
        plan = _pack(
            {"dim": dim, "sigmas": sigmas, "kind": meta["kind"], "n_head": n_head, "protocol": v}
        )
        phase = "job"
        try:
            for ch in self._silos.values():
                ch.send(r, JOB, job)
            for ch in self._servers.values():
                ch.send(r, PLAN, plan)
        except (PeerUnavailable, MessageRejected) as exc:
            self._abort(r)
            raise ProtocolAbort(phase, str(exc)) from None
        t_sent = time.perf_counter()
        # Both partials are awaited at once, so the abort names the server(s) that stalled.
        assert self._pool is not None
        waits = {
            name: self._pool.submit(self._receive_partial, ch, r, dim)
            for name, ch in self._servers.items()
        }
        failures: list[str] = []
        busy = (0.0, 0.0)
        for fut in waits.values():
            try:
                got = fut.result()
                busy = (max(busy[0], got[0]), busy[1] + got[1])
            except ProtocolAbort as exc:
                failures.append(exc.reason)
            except (PeerUnavailable, MessageRejected) as exc:
                failures.append(str(exc))
        if failures:
            self._abort(r)
            raise ProtocolAbort("aggregate", "; ".join(failures))
        # Both partials are in: the release happens now, so its events are journalled first.
        self.spent.extend(events)
        self._save_events()
        clock = _Clock()
        p0, p1 = (self._partials[name] for name in self._servers)
        np.add(p0, p1, out=p0)
        out = decode_fixed(p0, c.frac_bits)
        decoded = clock.read()
        t_done = time.perf_counter()
        self.round_seconds.append(t_done - t0)
        self.timings.append(
            {
                "round": self.round_seconds[-1],
                "t_sent": t_sent,
                "t_done": t_done,
                "receive": busy[0],
                "receive_cpu": busy[1],
                "decode": decoded[0],
                "decode_cpu": decoded[1],
            }
        )
        return out

    def _receive_partial(self, ch: Channel, r: int, dim: int) -> tuple[float, float]:
        buf = self._partials.get(ch.peer)
        if buf is None or buf.size != dim:
            buf = self._partials[ch.peer] = np.empty(dim, dtype=np.uint64)
        # a margin over the servers' own wait: when a silo stalls, the servers' reports naming
        # it arrive before the driver would blame a server for the silence
        return _recv_array(ch, r, PARTIAL, buf, self.timeout + _BLAME_MARGIN)

    def _abort(self, r: int) -> None:
        for ch in [*self._silos.values(), *self._servers.values()]:
            _safe_send(ch, r, ABORT, b"")

    # ------------------------------------------------------------------ checkpoints
    def _save_events(self) -> None:
        if self.checkpoint is None:
            return
        _atomic_write(
            self.checkpoint / "events.json",
            json.dumps({"round": self.round, "events": [e.to_dict() for e in self.spent]}).encode(),
        )

    def _save_state(self, **arrays: np.ndarray) -> None:
        if self.checkpoint is None:
            return
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        _atomic_write(self.checkpoint / "state.npz", buf.getvalue())

    def prepare(self) -> dict[str, np.ndarray]:
        """Check and load the checkpoint (once); call early to fail before any party connects."""
        if self._state is None:
            self._state = self._load()
        return self._state

    def _load(self) -> dict[str, np.ndarray]:
        if self.checkpoint is None:
            return {}
        self.checkpoint.mkdir(parents=True, exist_ok=True)
        cfg_path = self.checkpoint / "config.json"
        if not self.resume:
            if (self.checkpoint / "events.json").exists():
                raise ConfigError(
                    f"{self.checkpoint} already holds a training run; pass resume=True "
                    "(CLI: --resume) or choose an empty directory"
                )
            _atomic_write(cfg_path, self.config.model_dump_json().encode())
            return {}
        if not cfg_path.exists():
            raise ConfigError(f"nothing to resume in {self.checkpoint}")
        if load_config(cfg_path.read_text()) != self.config:
            raise ConfigError("resume needs the configuration the run was started with")
        ev = self.checkpoint / "events.json"
        if ev.exists():
            try:
                d = json.loads(ev.read_text())
                self.round = int(d["round"])
                self.spent = [SpentEvent.from_dict(e) for e in d["events"]]
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise CheckpointMismatchError(
                    f"{ev} is not a readable release journal ({type(exc).__name__})"
                ) from None
        # the journal must be a prefix of this configuration's plan, always (not only when a
        # ledger asks): an edited journal would otherwise make the guarantee under-report
        try:
            self.planned_events(remaining=True)
        except ConfigError as exc:
            raise CheckpointMismatchError(f"{ev}: {exc}") from None
        st = self.checkpoint / "state.npz"
        state: dict[str, np.ndarray] = {}
        if st.exists():
            try:
                with np.load(st, allow_pickle=False) as z:
                    state = {k: np.asarray(z[k]) for k in z.files}
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                raise CheckpointMismatchError(
                    f"{st} is not a readable checkpoint ({type(exc).__name__})"
                ) from None
        self._check_state(state)
        return state

    @abstractmethod
    def _check_state(self, state: dict[str, np.ndarray]) -> None:
        """The stored state against the journal: what was released is what was charged."""

    def _state_error(self, what: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(f"{self.checkpoint}: {what}")

    def _finite(self, state: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> None:
        a = state.get(name)
        if a is None:
            return
        if a.shape != shape or a.dtype.kind not in "fiu" or not np.all(np.isfinite(a)):
            raise self._state_error(f"state {name!r} has shape {a.shape}, expected finite {shape}")

    def _guarantee(
        self, mechanism: str, released: list[str], not_released: list[str]
    ) -> PrivacyGuarantee:
        c = self.config
        return PrivacyGuarantee.from_events(
            self.spent,
            delta=c.delta,
            unit=PrivacyUnit.USER,
            accountant="rdp",
            mechanism=mechanism,
            released=released,
            not_released=not_released,
            threat_model=(
                "honest-but-curious parties; the two aggregation servers do not collude. Either "
                "server alone sees only uniformly random shares (or their seeds) and its own "
                "noise, and every revealed sum carries at least the other server's full "
                "discrete-Gaussian noise, which is what the accounting counts (the second share "
                "is ignored). Users are disjoint across silos; joint DP for each user's own "
                "recommendations. Two colluding servers learn every silo's exact statistics."
                + (" TEST MODE: NO NOISE WAS ADDED." if c.insecure_disable_noise else "")
            ),
            seeded_noise=False,
        )


#: Seconds the driver waits for a partial beyond the servers' timeout (see _receive_partial).
_BLAME_MARGIN = 5.0


class Driver(_DriverBase):
    """Drives cross-silo DPALS: public inputs out, noisy sums in, item solves, checkpoints.

    Parameters
    ----------
    identity, roster
        The driver's key and the roster (it listens on its roster address for the silos and
        connects to both servers).
    config
        Public training configuration.
    checkpoint
        Directory for ``state.npz``, ``events.json`` and ``config.json`` after every completed
        release; with ``resume=True`` training continues from it (same config required).
    timeout
        Seconds to wait for each server's partial sum once a step is sent.
    """

    config: SiloConfig

    def __init__(
        self,
        identity: Identity,
        roster: Roster,
        config: SiloConfig,
        *,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(
            identity, roster, config, checkpoint=checkpoint, resume=resume, timeout=timeout
        )

    def _planned(self) -> list[SpentEvent]:
        c = self.config
        sigma, iterations = noise_scale(c)
        (counts,) = noise_plan(c, sigma, "counts")
        out = [SpentEvent(counts.name, gaussian_event(counts.z))]
        stats = noise_plan(c, sigma, "stats", 0)  # the multipliers do not depend on the head
        for step in range(iterations):
            out += [
                SpentEvent(f"step {step + 1}: noisy {s.name}", gaussian_event(s.z)) for s in stats
            ]
        return out

    def _groups(self) -> list[tuple[int, str]]:
        _, iterations = noise_scale(self.config)
        per_step = len(noise_plan(self.config, 1.0, "stats", 0))
        return [(1, "counts")] + [(per_step, "stats")] * iterations

    def _check_state(self, state: dict[str, np.ndarray]) -> None:
        c = self.config
        _, iterations = noise_scale(c)
        per_step = len(noise_plan(c, 1.0, "stats", 0))
        n = self._covered()
        if "noisy_counts" not in state:
            if n > 1:  # at most the counts release, journalled before its state was saved
                raise self._state_error(f"{n} releases journalled but no state saved")
            return
        self._finite(state, "noisy_counts", (c.n_items,))
        self._finite(state, "y_all", (c.n_items, c.factors))
        done = int(np.asarray(state.get("completed", -1)).reshape(-1)[0])
        if not 0 <= done <= iterations:
            raise self._state_error(f"{done} completed steps, the configuration has {iterations}")
        # every completed step's releases are journalled (a step may be journalled, not saved)
        if not 1 + done * per_step <= n <= 1 + (done + 1) * per_step:
            raise self._state_error(
                f"{done} completed steps need {1 + done * per_step} journalled releases, found {n}"
            )
        y = state.get("y")
        if y is not None and (y.ndim != 2 or y.shape[1] != c.factors or not np.all(np.isfinite(y))):
            raise self._state_error(f"state 'y' has shape {y.shape}, expected finite (head, k)")

    def train(self) -> SiloResult:
        """Run (or resume) the whole training; raises :class:`ProtocolAbort` on a fault."""
        c = self.config
        state = self.prepare()
        sigma, iterations = noise_scale(c)
        k = c.factors
        self._open()
        try:
            if "noisy_counts" not in state:
                seg = noise_plan(c, sigma, "counts")
                noisy = self._release(
                    {"kind": "counts", "count_sample": c.sampled}, {}, seg, [seg[0].name]
                )
                seed_rng = np.random.default_rng(None if c.seed is None else c.seed + 1)
                y0 = seed_rng.standard_normal((c.n_items, k)) * (c.init_scale / math.sqrt(k))
                state = {"noisy_counts": noisy, "completed": np.asarray(0), "y_all": y0}
                self._save_state(**state)
            noisy = np.asarray(state["noisy_counts"], dtype=np.float64)
            head = silo_head(c, sigma, noisy)
            counts_h = noisy[head]
            n_head = len(head)
            reg = resolve_regularization(
                c.regularization, revealed_sigma(c, sigma, n_head), c.clip_norm
            )
            reg_items = reg * (1.0 + np.maximum(counts_h, 0.0)) ** c.reg_exponent
            segments = noise_plan(c, sigma, "stats", n_head)
            y = (
                np.asarray(state["y_all"], dtype=np.float64)[head]
                if "y" not in state
                else state["y"]
            )
            y = np.asarray(y, dtype=np.float64)
            for step in range(int(state["completed"]), iterations):
                meta = {
                    "kind": "stats",
                    "step": step + 1,
                    "method": c.method,
                    "max_per_user": c.max_per_user,
                    "adaptive_exponent": c.adaptive_exponent,
                    "alpha0": c.alpha0,
                    "user_regularization": c.user_regularization,
                    "clip_norm": c.clip_norm,
                }
                labels = [f"step {step + 1}: noisy {s.name}" for s in segments]
                v = self._release(
                    meta, {"head": head, "counts_h": counts_h, "y": y}, segments, labels
                )
                t1 = time.perf_counter()
                g, lhs, rhs = unpack_statistics(v, n_head, k)
                y, _ = psd_solve(c.alpha0 * project_psd(g), lhs, rhs, reg_items, "if_indefinite")
                self.solve_seconds.append(time.perf_counter() - t1)
                state = {**state, "y": y, "completed": np.asarray(step + 1)}
                self._save_state(**state)
        except BaseException:
            self._close(ABORT)
            raise
        sent = self.bytes_sent
        self._close(BYE)
        items = np.zeros((c.n_items, k), dtype=np.float32)
        items[head] = y.astype(np.float32)
        return SiloResult(
            item_factors=items,
            head_items=head.astype(np.int64),
            noisy_counts=noisy.astype(np.float32),
            noise_scale=sigma,
            guarantee=self.guarantee(),
            regularization=reg,
            popularity_blend=resolve_popularity_blend(c.popularity_blend, c.epsilon),
            round_seconds=list(self.round_seconds),
            solve_seconds=list(self.solve_seconds),
            bytes_sent=sent,
        )

    def guarantee(self) -> PrivacyGuarantee:
        """The guarantee of everything released so far (from the journalled events)."""
        return self._guarantee(
            "cross-silo DPALS (two-server secret sharing, discrete Gaussian)",
            [
                "item factors (after the last private step)",
                "noisy item counts and the head item set",
                "the per-step noisy sums (Gramian, per-item left- and right-hand sides), "
                "to the driver",
            ],
            [
                "each silo's statistics (only uniformly random shares leave a silo)",
                "user factors (solved inside each silo from the released item factors)",
            ],
        )


class EASEDriver(_DriverBase):
    """Drives cross-silo DPEASE: (noisy counts →) one noisy item Gram matrix → EASE weights.

    Same session, checkpoint and fault handling as :class:`Driver`. With the head rule on
    (``head_snr > 0``) or a catalogue larger than ``max_items`` the noisy counts are released
    first and the head is chosen from them (central DPEASE's rule at the revealed noise,
    :func:`head_by_counts`); then each silo sends shares of its bounded Gram matrix over the
    head, the servers add noise, and the driver solves EASE on the decoded sum
    (:func:`privrec.models.ease.ease_from_gram`) with central's noise-scaled ridge at the
    revealed Gram noise std (:func:`revealed_std`). Resume reuses released counts.
    """

    config: SiloEASEConfig

    def __init__(
        self,
        identity: Identity,
        roster: Roster,
        config: SiloEASEConfig,
        *,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(
            identity, roster, config, checkpoint=checkpoint, resume=resume, timeout=timeout
        )

    def _planned(self) -> list[SpentEvent]:
        c = self.config
        z = ease_noise(c)
        out = []
        if c.restricted:
            (counts,) = ease_noise_plan(c, z, "counts")
            out.append(SpentEvent(counts.name, gaussian_event(counts.z)))
        (gram,) = ease_noise_plan(c, z, "gram", 0)
        out.append(SpentEvent(gram.name, gaussian_event(gram.z)))
        return out

    def _groups(self) -> list[tuple[int, str]]:
        return [(1, "counts")] * self.config.restricted + [(1, "gram")]

    def _check_state(self, state: dict[str, np.ndarray]) -> None:
        n = self._covered()
        if "noisy_counts" in state:
            self._finite(state, "noisy_counts", (self.config.n_items,))
            if not self.config.restricted or n < 1:
                raise self._state_error("stored noisy counts without their journalled release")
        elif n > (1 if self.config.restricted else 0):
            raise self._state_error(f"{n} releases journalled but no state saved")

    def train(self) -> SiloEASEResult:
        """Run (or resume) the training; raises :class:`ProtocolAbort` on a fault."""
        c = self.config
        state = self.prepare()
        z = ease_noise(c)
        self._open()
        try:
            noisy: np.ndarray | None = None
            if c.restricted:
                if "noisy_counts" not in state:
                    seg = ease_noise_plan(c, z, "counts")
                    counts = self._release(
                        {"kind": "counts", "count_sample": c.max_per_user}, {}, seg, [seg[0].name]
                    )
                    state = {"noisy_counts": counts}
                    self._save_state(**state)
                noisy = np.asarray(state["noisy_counts"], dtype=np.float64)
                # central DPEASE's rule: count ≥ head_snr × the Gram noise std, here the
                # revealed one, √2·z_gram·C (the rounding term needs the head size; < 1e-6)
                gram_std = math.sqrt(2.0) * z[0] * c.max_contribution
                head = head_by_counts(noisy, c.max_items, c.head_snr * gram_std, c.head_min)
                n_signal = int(np.count_nonzero(noisy >= c.head_snr * gram_std))
            else:
                head = np.arange(c.n_items)
                n_signal = len(head)
            n_head = len(head)
            # central DPEASE's β (set_popularity): raised as the head's signal fraction
            # drops; post-processing of the released counts and the public σ
            blend = ease_blend(
                c.popularity_blend, c.epsilon, c.popularity_fallback, n_signal, n_head
            )
            seg = ease_noise_plan(c, z, "gram", n_head)
            meta = {
                "kind": "gram",
                "max_contribution": c.max_contribution,
                "max_per_user": c.max_per_user,
            }
            v = self._release(meta, {"head": head}, seg, [seg[0].name])
            t1 = time.perf_counter()
            gram = unpack_gram(v, n_head)
            # the ridge from the revealed Gram noise std (both servers' shares), as planned
            noise_std = revealed_std(
                ease_noise_plan(_with_noise(c), z, "gram", n_head)[0], c.frac_bits
            )
            reg = resolve_ease_regularization(c.regularization, noise_std, n_head, c.reg_scale)
            weights = ease_from_gram(gram, reg)
            self.solve_seconds.append(time.perf_counter() - t1)
        except BaseException:
            self._close(ABORT)
            raise
        sent = self.bytes_sent
        self._close(BYE)
        return SiloEASEResult(
            weights=weights,
            head_items=head.astype(np.int64),
            item_popularity=np.diag(gram).astype(np.float32),
            noisy_counts=None if noisy is None else noisy.astype(np.float32),
            noise_multiplier=z[0],
            guarantee=self.guarantee(),
            regularization=reg,
            popularity_blend=blend,
            round_seconds=list(self.round_seconds),
            solve_seconds=list(self.solve_seconds),
            bytes_sent=sent,
        )

    def guarantee(self) -> PrivacyGuarantee:
        """The guarantee of everything released so far (from the journalled events)."""
        return self._guarantee(
            "cross-silo DPEASE (two-server secret sharing, discrete Gaussian)",
            ["the noisy item Gram matrix (to the driver)", "EASE item-item weights derived from it"]
            + (["noisy item counts and the head item set"] if self.config.restricted else []),
            [
                "each silo's Gram matrix (only uniformly random shares leave a silo)",
                "each user's scores (computed from that user's own history, shown only to them)",
            ],
        )


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
