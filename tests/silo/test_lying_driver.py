"""A lying driver: jobs that would shrink the noise relative to the signal, and repeated releases.

The servers size the noise from their own copy of the configuration; a driver could still lower
it by asking the silos for a finer fixed-point encoding (``frac_bits``), larger contribution
bounds, or the same release again and again (averaging). Silos holding the configuration refuse
such jobs, and servers refuse releases beyond the planned number.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from privrec.errors import ConfigError, PrivacyWarning
from privrec.secure.silo import AggregationServer, Silo, SiloConfig, SiloEASEConfig, setup_keys
from privrec.secure.silo_config import check_job, noise_plan, noise_scale, release_limits
from privrec.secure.silo_wire import _pack

CONFIG = SiloConfig(epsilon=4.0, delta=1e-6, n_items=20, factors=4, iterations=2)


def _job(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "kind": "stats", "frac_bits": CONFIG.frac_bits, "n_items": 20, "max_per_user": 100,
        "clip_norm": 0.3, "method": CONFIG.method, "adaptive_exponent": CONFIG.adaptive_exponent,
        "alpha0": CONFIG.alpha0, "user_regularization": CONFIG.user_regularization,
    }  # fmt: skip
    return {**base, **over}


def test_jobs_beyond_the_configuration_are_refused() -> None:
    check_job(CONFIG, _job())
    check_job(CONFIG, _job(kind="counts", count_sample=CONFIG.sampled))
    lies = [
        _job(frac_bits=CONFIG.frac_bits + 12),  # 4096× less noise relative to the signal
        _job(max_per_user=101),
        _job(clip_norm=0.31),
        _job(n_items=21),
        _job(kind="counts", count_sample=CONFIG.sampled + 1),
        _job(kind="gram", max_contribution=1.0),  # not a DPALS release
        # a review turned these into noise-free bits: a silo's encoding failed only when one
        # user held a chosen item (exponent −200), or a negative bound had a large one's size
        _job(adaptive_exponent=-200.0),
        _job(alpha0=1e300),
        _job(user_regularization=0.0),
        _job(method="tail"),
        _job(max_per_user=-5),
        _job(clip_norm=-0.3),
        _job(kind="counts", count_sample=0),
    ]
    for job in lies:
        with pytest.raises(ConfigError):
            check_job(CONFIG, job)
    ease = SiloEASEConfig(epsilon=3, delta=1e-6, n_items=20, max_items=20)
    check_job(ease, {"kind": "gram", "frac_bits": ease.frac_bits, "n_items": 20,
                     "max_contribution": ease.max_contribution, "max_per_user": ease.max_per_user})  # fmt: skip
    for bound in (-1e20, -1e5, 0.0):  # |C| would size the weights, the noise is sized for C
        with pytest.raises(ConfigError, match="max_contribution"):
            check_job(ease, {"kind": "gram", "frac_bits": ease.frac_bits, "n_items": 20,
                             "max_contribution": bound, "max_per_user": ease.max_per_user})  # fmt: skip
    assert release_limits(CONFIG) == {"counts": 1, "stats": 2}
    assert release_limits(ease) == {"counts": 1, "gram": 1}


def test_silo_refuses_repeats_and_warns_without_a_configuration(tmp_path: Path) -> None:
    roster, ids = setup_keys(tmp_path, 1)
    x = sp.csr_matrix(np.eye(5, 20))
    silo = Silo(ids["silo1"], roster, x, timeout=5, config=CONFIG)
    silo._check_job(_job(kind="counts", count_sample=CONFIG.sampled))
    with pytest.raises(ConfigError, match="beyond the 1"):
        silo._check_job(_job(kind="counts", count_sample=CONFIG.sampled))
    with pytest.warns(PrivacyWarning, match="lying driver"):
        Silo(ids["silo1"], roster, x, timeout=5)


def test_server_refuses_releases_beyond_the_plan(tmp_path: Path) -> None:
    roster, ids = setup_keys(tmp_path, 1)
    server = AggregationServer(ids["server0"], roster, timeout=5, config=CONFIG)
    z = noise_scale(CONFIG)[0]
    from privrec.secure.silo_wire import fixed_sigma

    def plan(kind: str, n_head: int) -> bytes:
        segs = noise_plan(CONFIG, z, kind, n_head)
        return _pack({
            "dim": sum(s.length for s in segs), "kind": kind, "n_head": n_head, "protocol": 2,
            "sigmas": [(s.length, fixed_sigma(s, CONFIG.frac_bits)) for s in segs],
        })  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server._check_plan(plan("counts", 0))
        with pytest.raises(ConfigError, match="beyond the 1"):  # the counts again: averaging
            server._check_plan(plan("counts", 0))
        server._check_plan(plan("stats", 5))
        server._check_plan(plan("stats", 5))
        with pytest.raises(ConfigError, match="beyond the 2"):
            server._check_plan(plan("stats", 5))
        with pytest.raises(ConfigError, match="exceeds the catalogue"):
            server._check_plan(plan("stats", 10**7))
    server.listener.close()


def test_a_head_outside_the_catalogue_is_a_typed_refusal(tmp_path: Path) -> None:
    roster, ids = setup_keys(tmp_path, 1)
    silo = Silo(ids["silo1"], roster, sp.csr_matrix(np.eye(5, 20)), timeout=5, config=CONFIG)
    meta = {**_job(), "n_items": 20, "method": "adaptive", "adaptive_exponent": 0.5,
            "alpha0": 2.0, "user_regularization": 0.1}  # fmt: skip
    for head in ([0, 25], [-1], [3, 3]):
        arrays = {
            "head": np.asarray(head),
            "counts_h": np.ones(len(head)),
            "y": np.ones((len(head), 4)),
        }
        with pytest.raises(ConfigError, match="head"):
            silo._compute(meta, arrays)


def test_silo_refuses_item_factors_that_change_the_layout(tmp_path: Path) -> None:
    """A stats job whose item factors have other columns than the configured factors.

    5 head items × 2 factors and 1 head item × 4 factors give statistics of the same length,
    so the servers (which check the plan's length) would accept both — but with the first the
    silos' high-sensitivity entries land where the servers add the Gramian's smaller noise.
    Found by a hostile review on 2026-12-07 (noise std 8.75 where 44.2 was accounted).
    """
    roster, ids = setup_keys(tmp_path, 1)
    x = sp.csr_matrix(np.eye(5, 20))
    silo = Silo(ids["silo1"], roster, x, timeout=5, config=CONFIG)
    meta = {**_job(), "method": CONFIG.method, "adaptive_exponent": CONFIG.adaptive_exponent,
            "alpha0": CONFIG.alpha0, "user_regularization": CONFIG.user_regularization}  # fmt: skip
    head = np.arange(5)
    good = {"head": head, "counts_h": np.full(5, 3.0), "y": np.full((5, CONFIG.factors), 0.1)}
    assert silo._compute(meta, good).ndim == 1
    lies = [
        {**good, "y": np.full((5, 2), 0.1)},  # other factors: another layout, same length
        {**good, "y": np.full((4, CONFIG.factors), 0.1)},  # a row missing
        {**good, "counts_h": np.full(3, 3.0)},  # too few counts (was an IndexError)
        {**good, "counts_h": np.array([1.0, np.nan, 1, 1, 1])},
        {**good, "y": np.full((5, CONFIG.factors), np.inf)},
    ]
    for arrays in lies:
        with pytest.raises(ConfigError):
            silo._compute(meta, arrays)
