"""Secure top-k with the three parties as local processes, and from a trained model.

:func:`secure_top_k_local` starts the parties of :mod:`privrec.secure.mpc` on one machine
(tests, benchmarks, the ``privrec mpc topk`` command); :func:`secure_recommend` folds a user
in first; :func:`export_party_inputs` writes each party's own input files for a run of
``privrec mpc party`` processes on separate machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from privrec.errors import (
    ConfigError,
    InvalidInputError,
    PeerUnavailable,
    ProtocolAbort,
    ProtocolError,
)
from privrec.secure import mpc
from privrec.secure.mpc import (
    _ROLE,
    CLIENT,
    MODEL_HOLDER,
    N_PARTIES,
    MPCParams,
    SecureTopKResult,
    _check_k,
    _check_shape,
    _exclusion_mask,
    _item_matrix,
    _user_vector,
    free_ports,
)
from privrec.secure.mpc_tls import make_tls_material

__all__ = ["export_party_inputs", "secure_recommend", "secure_top_k_local"]


def _kill(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):  # a process ignoring SIGKILL
            p.wait(10)


def secure_top_k_local(
    item_factors: npt.ArrayLike,
    user_vector: npt.ArrayLike,
    k: int = 10,
    *,
    exclude: npt.ArrayLike | None = None,
    public_items: bool = False,
    params: MPCParams | None = None,
    host: str = "127.0.0.1",
    tls: bool = False,
    timeout: float = 120.0,
) -> SecureTopKResult:
    """Run the three parties as separate processes on ``host`` and return the client's ids.

    Every input is validated here first (typed errors, nothing started). Each party then
    gets only its own input, through a private temporary directory; the processes talk
    over TCP on free ports of ``host`` (loopback by default; ``tls=True`` adds mutually
    authenticated TLS with throw-away certificates, e.g. to measure its cost). If a party
    fails or the run
    exceeds ``timeout``, the other processes are killed and :class:`ProtocolAbort` (a
    party failed, naming it and its error) or :class:`PeerUnavailable` (timeout) is raised.
    """
    params = params or MPCParams()
    params.validate()
    y = np.asarray(item_factors, dtype=np.float64)
    if y.ndim != 2:
        raise InvalidInputError(f"item factors must be a 2-D array, found shape {y.shape}")
    n_items, n_factors = y.shape
    _check_shape(n_items, n_factors)
    k = _check_k(k, n_items)
    y = _item_matrix(y, n_items, n_factors, params)
    u = _user_vector(user_vector, n_factors, params)
    mask = _exclusion_mask(exclude, n_items)
    if not timeout > 0:
        raise ConfigError(f"timeout must be positive, found {timeout!r}")
    t0 = time.perf_counter()
    inputs = {"user_vector": u, "exclude": np.flatnonzero(mask), "item_factors": y}
    for attempt in range(2):  # free ports can be taken by someone else before a party binds
        try:
            results = _run_processes(
                host, n_items, n_factors, k, public_items, params, timeout, inputs, tls
            )
            break
        except ProtocolAbort as exc:
            if attempt or "address already in use" not in exc.reason.lower():
                raise
    wall = time.perf_counter() - t0
    if any(r["items"] is not None for r in results[1:]):  # pragma: no cover - protocol invariant
        raise ProtocolAbort("output", "a party other than the client received the output")
    return SecureTopKResult(
        np.asarray(results[CLIENT]["items"], dtype=np.int64),
        tuple(int(r["bytes_sent"]) for r in results),
        tuple(float(r["seconds"]) for r in results),
        tuple(float(r["cpu_seconds"]) for r in results),
        wall,
    )


def _run_processes(
    host: str,
    n_items: int,
    n_factors: int,
    k: int,
    public_items: bool,
    params: MPCParams,
    timeout: float,
    inputs: dict[str, npt.NDArray[Any]],
    tls: bool,
) -> list[dict[str, Any]]:
    """Start the three party processes on free ports of ``host``, wait, collect the results."""
    ports = free_ports(N_PARTIES, host)
    import privrec

    src = str(Path(privrec.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    with tempfile.TemporaryDirectory(prefix="privrec-mpc-") as tmp:  # mode 0700
        d = Path(tmp)
        spec = {
            "addresses": [[host, p] for p in ports],
            "n_items": n_items,
            "n_factors": n_factors,
            "k": k,
            "public_items": public_items,
            "params": asdict(params),
            "timeout": timeout,
            "tls_dir": str(make_tls_material(d / "tls")) if tls else None,
        }
        (d / "spec.json").write_text(json.dumps(spec))
        np.savez(
            d / f"party-{CLIENT}.npz", user_vector=inputs["user_vector"], exclude=inputs["exclude"]
        )
        holder = "public.npz" if public_items else f"party-{MODEL_HOLDER}.npz"
        np.savez(d / holder, item_factors=inputs["item_factors"])
        code = mpc._PARTY_CODE.format(path=str(Path(mpc.__file__).resolve()))
        procs: list[subprocess.Popen[bytes]] = []
        logs = []
        try:
            for pid in range(N_PARTIES):
                log = open(d / f"log-{pid}.txt", "wb")  # noqa: SIM115 - closed below
                logs.append(log)
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", code, str(d / "spec.json"), str(pid)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=tmp,
                    )
                )
            deadline = time.monotonic() + timeout + 2.0  # + start-up of the processes
            while None in (states := [p.poll() for p in procs]):
                failed = [i for i, rc in enumerate(states) if rc not in (None, 0)]
                if failed:
                    _kill(procs)
                    raise _party_failure(d, failed[0], procs[failed[0]].returncode)
                if time.monotonic() > deadline:
                    _kill(procs)
                    raise PeerUnavailable(
                        f"secure top-k did not finish within {timeout:g} s; all parties stopped"
                    )
                time.sleep(0.02)
            failed = [i for i, p in enumerate(procs) if p.returncode != 0]
            if failed:
                raise _party_failure(d, failed[0], procs[failed[0]].returncode)
            return [json.loads((d / f"result-{i}.json").read_text()) for i in range(N_PARTIES)]
        finally:
            _kill(procs)
            for log in logs:
                log.close()


def _party_failure(d: Path, pid: int, rc: int | None) -> ProtocolError:
    """The typed error for a party that exited with ``rc`` (its own message if it left one)."""
    res = d / f"result-{pid}.json"
    if res.exists():
        info = json.loads(res.read_text())
        reason = f"{info.get('error')}: {info.get('message')}"
        if info.get("error") == "PeerUnavailable":
            return PeerUnavailable(f"party {pid} ({_ROLE[pid]}): {info.get('message')}")
    else:
        log = (d / f"log-{pid}.txt").read_text(errors="replace").strip().splitlines()
        reason = f"exit status {rc}" + (f": {log[-1]}" if log else "")
    return ProtocolAbort("party", f"party {pid} ({_ROLE[pid]}) failed — {reason}")


def secure_recommend(
    model: Any,
    user_items: Any,
    k: int = 10,
    *,
    public_items: bool = True,
    params: MPCParams | None = None,
    tls: bool = False,
    timeout: float = 120.0,
) -> SecureTopKResult:
    """Fold a user in on the client and run :func:`secure_top_k_local` on the model's items.

    ``user_items`` is the user's history as a 1-D row over the model's items; seen items
    and items a private model did not release (DPALS tail items) are excluded. The item
    factors of a trained model are public here by default (the released model); pass
    ``public_items=False`` to have the model holder input them as a secret.
    """
    y, u, exclude = _fold(model, user_items)
    return secure_top_k_local(
        y,
        u,
        k,
        exclude=exclude,
        public_items=public_items,
        params=params,
        tls=tls,
        timeout=timeout,
    )


def _fold(model: Any, user_items: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(item factors, user vector, excluded items)`` of a factor model and one user history."""
    factors = getattr(model, "item_factors_", None)
    if factors is None:
        raise ConfigError(
            f"{type(model).__name__} has no item_factors_: secure top-k needs a factor model"
        )
    hist = np.asarray(user_items).reshape(1, -1)
    u = np.asarray(model.fold_in(hist), dtype=np.float64).reshape(-1)
    y = np.asarray(factors, dtype=np.float64)
    exclude = np.flatnonzero(hist[0])
    head = getattr(model, "head_items_", None)
    if head is not None:  # items a private model did not release are never recommended
        exclude = np.union1d(exclude, np.setdiff1d(np.arange(y.shape[0]), np.asarray(head)))
    return y, u, exclude


def export_party_inputs(
    model: Any,
    user_items: Any,
    directory: str | Path,
    *,
    k: int = 10,
    public_items: bool = True,
    params: MPCParams | None = None,
) -> dict[str, Any]:
    """Write each party's own input files for ``privrec mpc party`` on separate machines.

    ``party-0/`` (the client's secrets, mode 0600: give it to party 0 only) holds the folded-in
    user vector and the items to leave out; ``party-1/`` (the model holder's secret, mode 0600)
    or ``public/`` with ``public_items`` the item factors; ``items.txt`` the catalogue's external ids and
    ``public.json`` the options every party must be given alike. Inputs are checked against
    the norm bounds first, as :func:`secure_top_k_local` does. Returns the public options.
    """
    from privrec.keyfiles import write_secret

    params = params or MPCParams()
    params.validate()
    y, u, exclude = _fold(model, user_items)
    n_items, n_factors = y.shape
    _check_shape(n_items, n_factors)
    k = _check_k(k, n_items)
    y = _item_matrix(y, n_items, n_factors, params)
    u = _user_vector(u, n_factors, params)
    _exclusion_mask(exclude, n_items)
    d = Path(directory)
    holder = d / ("public" if public_items else "party-1")
    try:
        for sub in (d / "party-0", holder):
            sub.mkdir(parents=True, exist_ok=True)
        os.chmod(d / "party-0", 0o700)
        if not public_items:  # the model holder's secret item factors: its own eyes only
            os.chmod(holder, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create {str(d)!r}: {exc.strerror}") from None

    def npy(arr: np.ndarray) -> bytes:
        import io

        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return buf.getvalue()

    write_secret(d / "party-0" / "user-vector.npy", npy(u))
    write_secret(d / "party-0" / "exclude.npy", npy(np.asarray(exclude, dtype=np.int64)))
    if public_items:
        (holder / "item-factors.npy").write_bytes(npy(y))
    else:
        write_secret(holder / "item-factors.npy", npy(y))
    ids = np.asarray(getattr(model, "item_ids_", np.arange(n_items)))
    (d / "items.txt").write_text("\n".join(str(v) for v in ids.tolist()) + "\n", encoding="utf-8")
    public = {
        "n_items": int(n_items),
        "factors": int(n_factors),
        "k": int(k),
        "public_items": bool(public_items),
        "user_norm_bound": params.user_norm_bound,
        "item_norm_bound": params.item_norm_bound,
    }
    (d / "public.json").write_text(json.dumps(public, indent=1), encoding="utf-8")
    return public
