"""The data-holding roles of cross-silo training: :class:`AggregationServer` and :class:`Silo`
(see :mod:`privrec.secure.silo` for the protocol, its privacy argument and faults)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from privrec.errors import (
    ConfigError,
    InvalidInputError,
    MessageRejected,
    PeerUnavailable,
    PrivacyWarning,
    ProtocolAbort,
)
from privrec.models.dp_als import (
    user_weights,
)
from privrec.privacy.distributed import sample_discrete_gaussian
from privrec.privacy.randomness import secure_generator
from privrec.secure.channel import (
    Channel,
    Identity,
    Listener,
    Roster,
    connect,
)
from privrec.secure.prg import add_mask
from privrec.secure.release_log import ReleaseLog
from privrec.secure.silo_config import (
    AnyConfig,
    SiloConfig,
    SiloEASEConfig,
    check_job,
    ease_noise,
    ease_noise_plan,
    noise_plan,
    noise_scale,
)
from privrec.secure.silo_stats import binary, silo_counts, silo_gram, silo_statistics
from privrec.secure.silo_wire import (
    _IDLE,
    _NOISE_LIMIT,
    ABORT,
    BYE,
    FAILED,
    JOB,
    PARTIAL,
    PLAN,
    SEED,
    SHARE,
    _unpack,
    check_protocol,
    encode_fixed,
    fixed_sigma,
    seed_share,
)

__all__ = ["AggregationServer", "Silo"]


# ------------------------------------------------------------------------------------ roles
def _safe_send(ch: Channel, step: int, kind: int, payload: bytes) -> None:
    with contextlib.suppress(PeerUnavailable, OSError):
        ch.send(step, kind, payload)


def _accept(listener: Listener, timeout: float, missing: Sequence[str] = ()) -> Channel:
    """Next roster party to complete the handshake; failed handshakes are dropped, not fatal.

    A port scanner or an impostor without a roster key must not be able to stop a session,
    so only silence until ``timeout`` (overall) raises :class:`PeerUnavailable`, naming the
    parties still ``missing``.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            who = ", ".join(repr(m) for m in missing) or "a party"
            raise PeerUnavailable(
                f"{listener.me.name}: {who} did not connect within {timeout:g} s (not started, "
                "failed at start-up, wrong roster or key, or unreachable)"
            )
        try:
            return listener.accept(left)
        except (MessageRejected, PeerUnavailable):  # a failed handshake, or this wait's end
            continue


#: Longest reason a party forwards or shows from a peer's FAILED message.
_REASON_CHARS = 500


def _recv_step(ch: Channel, step: int, kinds: set[int], timeout: float) -> tuple[int, bytes]:
    """Next frame for ``step`` with a type in ``kinds``; frames of older (aborted) steps are skipped."""
    while True:
        got_step, kind, payload = ch.recv_any(timeout)
        if got_step < step:
            continue
        if got_step == step and kind == FAILED:  # the peer could not take part: its reason
            reason = payload.decode("utf-8", errors="replace")
            raise ProtocolAbort("aggregate", " ".join(reason.split())[:_REASON_CHARS])
        if got_step != step or kind not in kinds:
            raise MessageRejected(
                f"unexpected message type {kind} for step {got_step} from {ch.peer!r}"
            )
        return kind, payload


def _recv_array(
    ch: Channel, step: int, kind: int, out: np.ndarray, timeout: float
) -> tuple[float, float]:
    """Receive ``out.nbytes`` bytes of type ``kind`` for ``step`` straight into ``out``.

    Frames of older (aborted) steps are authenticated and skipped; a ``FAILED`` message
    raises :class:`ProtocolAbort` with the sender's reason. Returns the wall seconds from the
    first byte of the message to its last chunk being authenticated and decrypted (transfer
    and AES-GCM, not the wait for the sender), and this thread's CPU seconds for it.
    """
    view = out.reshape(-1).view(np.uint8).data
    total, pos, t0 = len(view), 0, 0.0
    c0 = time.thread_time()
    while True:
        got_step, got_kind, body = ch.recv_frame(timeout)
        if pos == 0:
            t0 = time.perf_counter()
        if got_step < step:
            ch.open_frame(got_step, got_kind, body)
            continue
        if got_step == step and got_kind == FAILED and pos == 0:
            reason = ch.open_frame(got_step, got_kind, body).decode(errors="replace")
            # a peer's reason is shown to an operator: bounded, one line
            raise ProtocolAbort("aggregate", " ".join(reason.split())[:_REASON_CHARS])
        n = len(body) - 16
        if got_step != step or got_kind != kind or pos + n > total or n <= 0:
            ch.open_frame(got_step, got_kind, body)  # authentic, but not what was expected
            raise MessageRejected(
                f"unexpected message type {got_kind} ({n} bytes) for step {got_step} "
                f"from {ch.peer!r}"
            )
        ch.open_frame(got_step, got_kind, body, view[pos : pos + n])
        pos += n
        if pos == total:
            return time.perf_counter() - t0, time.thread_time() - c0


class AggregationServer:
    """One of the two non-colluding servers: sums shares, adds its discrete-Gaussian noise share.

    The first server in the roster's order receives each silo's share as a 32-byte seed
    (:func:`seed_share`) and expands it; the second receives the other share as an array.

    Parameters
    ----------
    identity, roster
        This server's key and the set-up roster (it listens on its roster address).
    timeout
        Seconds to wait for any single share once a step has started.
    allow_no_noise
        TEST ONLY: accept plans without noise (the CLI never sets it).
    crash_at_round
        TEST ONLY: drop every connection when this round's plan arrives (a killed server).
    config
        The public training configuration (:class:`SiloConfig` or :class:`SiloEASEConfig`),
        the server's own copy (CLI: ``--config``), **required**: the server recomputes each
        release's noise from it and refuses a plan with less, so a driver cannot lower the
        noise the server adds.
    release_log
        A file counting the releases this server answered for the run, across sessions
        (:class:`~privrec.secure.release_log.ReleaseLog`; CLI: ``--release-log``). Without it
        the limit on releases holds for this object only: a driver restarting the session
        would be answered afresh.
    """

    def __init__(
        self,
        identity: Identity,
        roster: Roster,
        *,
        config: AnyConfig | None,
        timeout: float = 60.0,
        allow_no_noise: bool = False,
        crash_at_round: int | None = None,
        release_log: Path | str | None = None,
    ) -> None:
        self.identity = identity
        if isinstance(config, SiloConfig):
            self._z: Any = noise_scale(config)[0]
        elif isinstance(config, SiloEASEConfig):
            self._z = ease_noise(config)
        else:
            raise ConfigError(
                "an aggregation server needs the run's public configuration (CLI: --config "
                "run.json) to check that every step carries the noise it requires"
            )
        self.config: AnyConfig = config
        self.roster = roster
        self.timeout = timeout
        self.allow_no_noise = allow_no_noise
        self.crash_at_round = crash_at_round
        self.listener = Listener(identity, roster, timeout=timeout)
        self.seed_holder = roster.names("server").index(identity.name) == 0
        self.timings: list[dict[str, float]] = []
        self._scratch = np.empty(0, dtype=np.uint64)
        self._sum = np.empty(0, dtype=np.uint64)
        self._log = ReleaseLog(release_log, config)

    def run(self) -> None:
        """Serve one training session (returns on BYE, raises if the session breaks)."""
        silos = self.roster.names("silo")
        driver_name = self.roster.names("driver")[0]
        chans: dict[str, Channel] = {}
        # Noise depends only on the public plan: it is drawn in the background while the shares
        # arrive, and since every DPALS step has the same plan, the next step's noise is drawn
        # right after a partial is sent (while the driver solves and the silos compute) and
        # used if the next plan is the same.
        pool = ThreadPoolExecutor(2, thread_name_prefix=f"{self.identity.name}-noise")
        ahead: tuple[bytes, Future[tuple[np.ndarray, tuple[float, float]]]] | None = None
        try:
            while len(chans) < len(silos) + 1:
                missing = [p for p in [driver_name, *silos] if p not in chans]
                ch = _accept(self.listener, max(self.timeout, 30.0), missing)
                if ch.peer in chans or self.roster[ch.peer].role == "server":
                    ch.close()
                    raise MessageRejected(f"unexpected connection from {ch.peer!r}")
                chans[ch.peer] = ch
            driver = chans[driver_name]
            while True:
                step, kind, payload = driver.recv_any(_IDLE)
                if kind == BYE:
                    return
                if kind == ABORT:
                    continue
                if kind != PLAN:
                    raise MessageRejected(f"server expected a plan, got type {kind}")
                if self.crash_at_round is not None and step >= self.crash_at_round:
                    return  # the finally block drops every connection, like a killed process
                try:
                    segments, dim, repeats, label = self._check_plan(payload)
                    drawn_ahead = ahead is not None and ahead[0] == payload
                    if ahead is None or not drawn_ahead:  # draw it while the shares arrive
                        ahead = (payload, pool.submit(_draw_noise, segments, dim))
                    noise_future, ahead = ahead[1], None
                    partial, noise_s = self._aggregate(
                        step, dim, noise_future, [chans[s] for s in silos], label
                    )
                except ProtocolAbort as exc:  # a silo reported why it cannot take part
                    why = " ".join(exc.reason.split())[:_REASON_CHARS]
                    _safe_send(driver, step, FAILED, f"{self.identity.name}: {why}".encode())
                    continue
                except (PeerUnavailable, MessageRejected, ConfigError, InvalidInputError) as exc:
                    _safe_send(driver, step, FAILED, f"{self.identity.name}: {exc}".encode())
                    if isinstance(exc, PeerUnavailable | MessageRejected):
                        raise  # a broken silo connection ends the session
                    continue
                clock = _Clock()
                driver.send_array(step, PARTIAL, partial)
                sent_s = clock.read()
                self.timings[-1].update(
                    send=sent_s[0],
                    send_cpu=sent_s[1],
                    noise=noise_s[0],
                    noise_cpu=noise_s[1],
                    noise_ahead=float(drawn_ahead),
                )
                if repeats:
                    ahead = (payload, pool.submit(_draw_noise, segments, dim))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            for ch in chans.values():
                ch.close()
            self.listener.close()

    def _check_plan(
        self, payload: bytes
    ) -> tuple[list[tuple[int, float]], int, bool, tuple[str, int, int]]:
        """The plan's segments ``(length, σ)`` and dimension, whether the next release is
        likely to repeat it (DPALS steps), and the release it names (:func:`_bound_seed`), after
        checking its noise against this server's own copy of the configuration (a driver
        cannot lower it) and counting it (:class:`~privrec.secure.release_log.ReleaseLog`)."""
        meta, _ = _unpack(payload)
        check_protocol(meta, "server")
        try:
            dim = int(meta["dim"])
            segments = [(int(n), float(s)) for n, s in meta["sigmas"]]
            kind, n_head = str(meta["kind"]), int(meta["n_head"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageRejected(f"malformed noise plan: {exc!r}") from None
        if sum(n for n, _ in segments) != dim or dim < 1 or n_head < 0:
            raise ConfigError("noise plan does not cover the vector")
        if n_head > self.config.n_items:
            raise ConfigError(f"the plan's head ({n_head} items) exceeds the catalogue")
        if isinstance(self.config, SiloConfig):
            expected = noise_plan(self.config, self._z, kind, n_head)
        else:
            expected = ease_noise_plan(self.config, self._z, kind, n_head)
        if [n for n, _ in segments] != [e.length for e in expected] or any(
            not s >= fixed_sigma(e, self.config.frac_bits) * (1 - 1e-9)
            for (_, s), e in zip(segments, expected, strict=True)
        ):
            raise ConfigError("the plan has less noise than the configuration requires")
        for _, s in segments:
            if s == 0 and not self.allow_no_noise:
                raise ConfigError("refusing a plan without noise (test-only mode)")
            if not s <= _NOISE_LIMIT:
                raise ConfigError(f"noise σ = {s:.3g} could overflow the 64-bit sum")
        # never more releases of a kind than the configuration plans (and its retries):
        # answering repeats would let a driver average the noise away. Counted once the plan
        # is found sound (a refused plan releases nothing) and before any share is summed.
        self._log.take(kind)
        return segments, dim, kind == "stats", (kind, n_head, dim)

    def _aggregate(
        self,
        step: int,
        dim: int,
        noise: Future[tuple[np.ndarray, tuple[float, float]]],
        silos: list[Channel],
        label: tuple[str, int, int],
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """Every silo's share (seeds expanded, or arrays received) plus the noise, mod 2^64.

        The noise is drawn in another thread (or was drawn ahead) while the shares arrive;
        ``noise_wait`` in :attr:`timings` is how long the partial then still waited for it.
        The seeds are expanded bound to the release the plan names (``label``,
        :func:`_bound_seed`): a silo asked for another release masked its share otherwise.
        """
        got = np.zeros(2)  # receive wall, CPU
        summed = np.zeros(2)  # sum wall, CPU
        if self._sum.size != dim:
            self._sum = np.empty(dim, dtype=np.uint64)
        acc = self._sum
        acc.fill(0)
        if self.seed_holder:
            for ch in silos:
                _, seed = _recv_step(ch, step, {SEED}, self.timeout)
                if len(seed) != 32:
                    raise MessageRejected(f"seed from {ch.peer!r} is not 32 bytes")
                clock = _Clock()
                add_mask(acc, _bound_seed(seed, *label))
                summed += clock.read()
        else:
            if self._scratch.size != acc.size:
                self._scratch = np.empty(acc.size, dtype=np.uint64)
            for ch in silos:
                got += _recv_array(ch, step, SHARE, self._scratch, self.timeout)
                clock = _Clock()
                np.add(acc, self._scratch, out=acc)
                summed += clock.read()
        clock = _Clock()
        partial, noise_s = noise.result()
        waited = clock.read()[0]
        clock = _Clock()
        np.add(partial, acc, out=partial)
        summed += clock.read()
        self.timings.append(
            {
                "receive": float(got[0]),
                "receive_cpu": float(got[1]),
                "sum": float(summed[0]),
                "sum_cpu": float(summed[1]),
                "noise_wait": waited,
            }
        )
        return partial, noise_s


def _bound_seed(seed: bytes, kind: str, n_head: int, dim: int) -> bytes:
    """The mask seed of a silo's share, bound to the release it was computed for.

    The servers size the noise from the plan's kind and head size, the silos compute from the
    job's; a lying driver could otherwise ask the silos for one release (the noisy counts) and
    tell the servers it is another of the same length (a Gramian or a step's statistics, with
    less noise per coordinate), or count it against the other kind's limit. Binding the mask
    to ``(kind, n_head, dim)`` makes such a sum uniformly random: the first server expands the
    seed under the plan's release, the silo masked it under the job's.
    """
    tag = json.dumps([kind, n_head, dim], separators=(",", ":")).encode()
    return hashlib.sha256(b"privrec-silo-mask\0" + seed + b"\0" + tag).digest()


def _draw_noise(
    segments: list[tuple[int, float]], dim: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """One server's noise for a plan, in fixed point (``uint64``), and its wall and CPU seconds.

    Each segment gets i.i.d. discrete Gaussians of its σ from
    :func:`privrec.privacy.distributed.sample_discrete_gaussian` with a fresh ChaCha20
    :func:`~privrec.privacy.randomness.secure_generator`.
    """
    clock = _Clock()
    acc = np.zeros(dim, dtype=np.uint64)
    rng = secure_generator()
    start = 0
    for n, s in segments:
        if s > 0:
            acc[start : start + n] = sample_discrete_gaussian(s, n, rng).view(np.uint64)
        start += n
    return acc, clock.read()


class _Clock:
    """Wall seconds and this thread's CPU seconds since creation (CPU time does not count
    waiting for a peer or for a core, so it stays meaningful on a loaded machine)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.thread_time() - self.cpu


def _timed_send_array(ch: Channel, step: int, kind: int, data: np.ndarray) -> tuple[float, float]:
    clock = _Clock()
    ch.send_array(step, kind, data)
    return clock.read()


class Silo:
    """A data holder: answers the driver's jobs with shares of its bounded statistics.

    ``matrix`` is the silo's users × items interaction matrix over the shared catalogue
    (its users must not appear in any other silo); it may have fewer columns than the
    catalogue (items nobody in this silo touched): the catalogue size comes with the first
    job, and a silo whose data names an item outside it reports that to the servers, which
    name it to the driver at once (no timeout). Each job's seed share goes to the first
    server as soon as the job arrives and the array share to the second once computed; the
    two sends run concurrently, so a server that stops reading can only stall its own share
    (and is the one the driver names).

    With ``config`` the silo refuses jobs beyond the configuration's bounds and releases beyond
    its plan (and ``retries``); ``release_log`` counts them across sessions, as for
    :class:`AggregationServer`.
    """

    def __init__(
        self,
        identity: Identity,
        roster: Roster,
        matrix: Any,
        *,
        timeout: float = 60.0,
        config: AnyConfig | None = None,
        release_log: Path | str | None = None,
    ) -> None:
        self.identity = identity
        self.roster = roster
        if config is None and release_log is not None:
            raise ConfigError("a release log counts a run's releases: give the configuration too")
        if config is None:
            warnings.warn(
                "a silo without its own copy of the run's configuration (CLI: --config) cannot "
                "check the driver's jobs: a lying driver could ask for a finer encoding, larger "
                "contribution bounds or repeated releases, and so less noise than the guarantee "
                "states",
                PrivacyWarning,
                stacklevel=2,
            )
        self.config = config
        self._log = None if config is None else ReleaseLog(release_log, config)
        self.x = binary(matrix)
        self.timeout = timeout
        self.n_silos = len(roster.names("silo"))
        self._weights: tuple[bytes, sp.csr_matrix, sp.csr_matrix] | None = None
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.compute_seconds: list[float] = []
        self.timings: list[dict[str, float]] = []
        _warm_kernels()

    def run(self) -> None:
        """Serve one training session (returns on BYE, raises if the session breaks)."""
        t, wait = self.timeout, max(self.timeout, 30.0)
        driver = connect(
            self.identity, self.roster, self.roster.names("driver")[0], timeout=t, retry_for=wait
        )
        servers = [
            connect(self.identity, self.roster, s, timeout=t, retry_for=wait)
            for s in self.roster.names("server")
        ]
        pool = ThreadPoolExecutor(2, thread_name_prefix=f"{self.identity.name}-send")
        try:
            while True:
                step, kind, payload = driver.recv_any(_IDLE)
                if kind == BYE:
                    return
                if kind == ABORT:
                    continue
                if kind != JOB:
                    raise MessageRejected(f"silo expected a job, got type {kind}")
                meta, arrays = _unpack(payload)
                seed = os.urandom(32)
                sent = [pool.submit(servers[0].send, step, SEED, seed)]  # before computing
                clock = _Clock()
                try:
                    check_protocol(meta, "silo")
                    self._check_job(meta)
                    dim = int(meta["dim"])
                    vec = self._compute(meta, arrays)
                    computed = clock.read()
                    t_end = time.perf_counter()
                    if vec.size != dim:
                        raise ConfigError(f"statistics have {vec.size} values, the plan {dim}")
                    clock = _Clock()
                    out, scratch = self._buffer(dim)
                    n_head = int(np.asarray(arrays["head"]).size) if "head" in arrays else 0
                    share = seed_share(
                        encode_fixed(
                            vec, int(meta["frac_bits"]), self.n_silos, out=out, scratch=scratch
                        ),
                        _bound_seed(seed, str(meta["kind"]), n_head, dim),
                    )
                except (ConfigError, InvalidInputError, KeyError, TypeError, ValueError) as exc:
                    # Tell both servers why (they name this silo to the driver at once); the
                    # seed share already sent is uniformly random and reveals nothing.
                    sent[0].result()
                    reason = f"silo {self.identity.name!r} cannot take part: {exc}".encode()
                    for ch in servers:
                        _safe_send(ch, step, FAILED, reason)
                    continue
                encoded = clock.read()
                clock = _Clock()
                big = pool.submit(_timed_send_array, servers[1], step, SHARE, share)
                sent[0].result()  # a server that is gone raises PeerUnavailable here
                send_cpu = big.result()[1]
                self.compute_seconds.append(computed[0])
                self.timings.append(
                    {
                        "compute": computed[0],
                        # CLOCK_MONOTONIC: comparable across processes on one machine
                        "t_start": t_end - computed[0],
                        "t_end": t_end,
                        "encode": encoded[0],
                        "encode_cpu": encoded[1],
                        "send": clock.read()[0],
                        "send_cpu": send_cpu,
                    }
                )
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            for ch in [driver, *servers]:
                ch.close()

    def _check_job(self, meta: dict[str, Any]) -> None:
        """The job against the silo's own configuration: bounds, encoding, release count."""
        if self.config is None or self._log is None:
            return
        check_job(self.config, meta)
        self._log.take(str(meta["kind"]))

    def _buffer(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        if dim not in self._buffers:
            self._buffers = {dim: (np.empty(dim, dtype=np.uint64), np.empty(dim))}
        return self._buffers[dim]

    def _catalogue(self, n_items: int) -> None:
        """Fit the silo's matrix to the shared catalogue of ``n_items`` (announced in each job)."""
        if n_items == self.x.shape[1]:
            return
        used = self.x.indices.max(initial=-1) if self.x.nnz else -1
        if used >= n_items:
            raise ConfigError(
                f"its data names items outside the shared catalogue of {n_items} items "
                f"(ids 0..{n_items - 1}); the silo files and the configuration disagree"
            )
        x = self.x
        self.x = sp.csr_matrix((x.data, x.indices, x.indptr), shape=(x.shape[0], n_items))
        self._weights = None

    def _compute(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> np.ndarray:
        self._catalogue(int(meta["n_items"]))
        rng = secure_generator()
        if meta["kind"] == "counts":
            return silo_counts(self.x, int(meta["count_sample"]), rng)
        head = np.asarray(arrays["head"], dtype=np.int64)
        n_items = self.x.shape[1]
        if head.ndim != 1 or (head.size and (head.min() < 0 or head.max() >= n_items)):
            raise ConfigError(f"the job's head names items outside the catalogue of {n_items}")
        if np.unique(head).size != head.size:
            raise ConfigError("the job's head names an item twice")
        if meta["kind"] == "gram":
            return silo_gram(
                self.x[:, head], float(meta["max_contribution"]), int(meta["max_per_user"]), rng
            )
        counts_h = np.asarray(arrays["counts_h"], dtype=np.float64)
        y = np.asarray(arrays["y"], dtype=np.float64)
        # The statistics' layout (Gramian, item blocks) follows from the head size and the
        # number of factors; the servers size each segment's noise from the plan's head size and
        # the configured factors. A job whose y has other columns could give a layout of the
        # same length whose high-sensitivity entries land in low-noise segments: refused.
        factors = getattr(self.config, "factors", None)
        if (
            y.ndim != 2
            or y.shape[0] != head.size
            or (factors is not None and y.shape[1] != factors)
        ):
            raise ConfigError(
                f"the job's item factors have shape {y.shape}, expected ({head.size}, "
                f"{factors if factors is not None else 'k'}): one row per head item and the "
                "configured number of factors"
            )
        if counts_h.shape != head.shape or not np.all(np.isfinite(counts_h)):
            raise ConfigError(
                f"the job's head counts have shape {counts_h.shape} or non-finite values, "
                f"expected {head.size} finite counts"
            )
        if not np.all(np.isfinite(y)):
            raise ConfigError("the job's item factors are not finite")
        key = head.tobytes() + counts_h.tobytes()
        if self._weights is None or self._weights[0] != key:
            xh = binary(self.x[:, head])
            w = user_weights(
                xh,
                counts_h,
                str(meta["method"]),
                int(meta["max_per_user"]),
                float(meta["adaptive_exponent"]),
                rng,
            )
            self._weights = (key, xh, w)
        _, xh, w = self._weights
        return silo_statistics(
            xh,
            w,
            y,
            alpha0=float(meta["alpha0"]),
            user_regularization=float(meta["user_regularization"]),
            clip_norm=float(meta["clip_norm"]),
        )


_warmed = threading.Event()


def _warm_kernels() -> None:
    """Load (or compile) the numba kernels a silo uses, once per process, before it connects.

    Otherwise the first step pays it, and a peer's short timeout can mistake a healthy silo
    loading its kernels for a stalled one.
    """
    if _warmed.is_set():
        return
    x = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
    y = np.full((3, 2), 0.1)
    silo_statistics(x, x, y, alpha0=1.0, user_regularization=0.1, clip_norm=1.0)
    _warmed.set()
