"""DPALS's ``fit(on_release=…)`` hook: every accounted release, noisy only, post-processing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from privrec.data import synthetic
from privrec.data.interactions import Interactions
from privrec.models import dp_als
from privrec.models.dp_als import DPALS, dpals_releases
from privrec.models.dp_als_accounting import REST_LABEL
from privrec.models.releases import Release
from privrec.privacy.events import SpentEvent
from privrec.privacy.mechanisms import gaussian_event

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


@pytest.fixture(scope="module")
def data() -> Interactions:
    return synthetic(n_users=300, n_items=120, seed=0)


def _fit(data: Interactions, hook: Any = None, **params: Any) -> DPALS:
    kw: dict[str, Any] = {"epsilon": 2.0, "delta": 1e-5, "unit": "user", "seed": 3}
    model = DPALS(**{**kw, **params})
    return model.fit(data) if hook is None else model.fit(data, on_release=hook)


def made_releases(m: DPALS) -> list[SpentEvent]:
    """The releases a fit made, each with its own event: the histogram (as the guarantee holds
    it), the counts at the fit's count multiplier and every step at its steps' σ."""
    c = m.config()
    assert isinstance(c, dp_als.DPALSConfig)
    b0 = c.nominal_bound if c.max_per_user is None else c.max_per_user
    steps = dpals_releases(m.noise_scale_, m.iterations_, b0, m._ratios(c), None, c.lhs)[1:]
    counts = SpentEvent("noisy item counts", gaussian_event(m.count_noise_multiplier_))
    spent = m.privacy_guarantee.spent_events
    lengths = spent[:1] if c.max_per_user is None or c.factors is None else []
    return [*lengths, counts, *steps]


CASES = [
    {},  # defaults: data-adaptive B and k (length histogram), lhs="none"
    {"lhs": "full", "factors": 4, "max_per_user": 10, "head_fraction": 1.0},
    {"lhs": "diagonal", "method": "tail", "unit": "interaction", "factors": 4},
]


@pytest.mark.parametrize("params", CASES)
def test_hook_reports_every_release_the_accounting_lists(
    data: Interactions, params: dict[str, Any]
) -> None:
    seen: list[Release] = []
    m = _fit(data, seen.append, **params)
    c = m.config()
    assert isinstance(c, dp_als.DPALSConfig)
    planned = made_releases(m)
    assert len(seen) == len(planned)
    assert [r.label for r in seen] == [p.label for p in planned]
    assert [r.event for r in seen] == [p.event for p in planned]
    # the guarantee holds the histogram and one event the rest make up (an adaptive count
    # share), or every release on its own (fixed B and k: no histogram to read a share from)
    spent = m.privacy_guarantee.spent_events
    if spent[-1].label == REST_LABEL:
        rates = [1.0 / r.event.noise_multiplier**2 for r in seen[len(spent) - 1 :]]
        assert sum(rates) == pytest.approx(1.0 / spent[-1].event.noise_multiplier ** 2, rel=1e-9)
    else:
        assert [s.to_dict() for s in spent] == [p.to_dict() for p in planned]
    for r in seen:  # noise std / sensitivity is the accounted multiplier
        assert r.noise_multiplier == pytest.approx(r.event.noise_multiplier, rel=1e-12)
        assert not r.value.flags.writeable
    steps = [r for r in seen if r.step is not None]
    assert {r.step for r in steps} == set(range(1, m.iterations_ + 1))
    rhs = [r for r in steps if r.name == "rhs"]
    assert len(rhs) == m.iterations_
    for r in rhs:
        assert r.items is not None and r.item_factors is not None
        assert np.array_equal(r.items, m.head_items_)
        assert r.value.shape == r.item_factors.shape == (len(m.head_items_), m.factors_)
    # the last step's solve is what the model keeps; step t + 1 starts from step t's solve —
    # except in one round (small n·ε), where every step re-releases the first step's sums
    same = np.array_equal(rhs[0].item_factors, rhs[1].item_factors)
    assert same == m.one_round_
    counts = next(r for r in seen if r.name == "counts")
    assert np.allclose(counts.value, m.noisy_counts_, rtol=1e-6, atol=1e-4)


def test_hook_never_sees_the_clean_statistics(
    data: Interactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spy on the clean statistics (before noise); every release differs by noise of its std."""
    clean: dict[str, list[np.ndarray]] = {"gramian": [], "lhs": [], "rhs": [], "counts": []}

    def spy(name: str, orig: Any, *outs: str) -> Any:
        def f(*args: Any, **kwargs: Any) -> Any:
            out = orig(*args, **kwargs)
            for key, value in zip(outs, out if len(outs) > 1 else (out,), strict=True):
                if key:
                    clean[key].append(np.array(value, dtype=np.float64, copy=True))
            return out

        monkeypatch.setattr(dp_als, name, f)

    spy("gramian", dp_als.gramian, "gramian")
    spy("item_statistics", dp_als.item_statistics, "lhs", "rhs")
    spy("bounded_counts", dp_als.bounded_counts, "counts", "")
    seen: list[Release] = []
    _fit(data, seen.append, lhs="full", factors=8, max_per_user=10, head_fraction=1.0)
    for name, values in clean.items():
        released = [r for r in seen if r.name == name]
        assert len(released) == len(values) > 0
        for r, v in zip(released, values, strict=True):
            noise = np.asarray(r.value, dtype=np.float64) - v
            assert not np.allclose(noise, 0.0), f"{r.label}: the hook saw the clean statistic"
            # the difference is the noise the accounting states (std within sampling error)
            if name in ("gramian", "lhs"):  # one draw per upper-triangle entry, mirrored
                upper = np.triu_indices(noise.shape[-1])
                noise = noise[..., upper[0], upper[1]]
            if noise.size >= 500:
                assert noise.std() == pytest.approx(r.noise_std, rel=0.15), r.label
    assert not any(r.name == "lengths" for r in seen)  # given B and k: no histogram released


def test_length_histogram_release_is_noisy(data: Interactions) -> None:
    seen: list[Release] = []
    _fit(data, seen.append)
    (lengths,) = [r for r in seen if r.name == "lengths"]
    assert lengths.step is None and lengths.items is None
    assert not np.allclose(lengths.value, np.round(lengths.value))  # clean counts are integers


def test_hook_is_post_processing(data: Interactions) -> None:
    """The same seeded fit with and without the hook: identical results; the hook can't write."""
    plain = _fit(data, lhs="full", factors=4, max_per_user=10)
    writes: list[str] = []

    def meddle(r: Release) -> None:
        try:
            r.value[...] = 0
        except ValueError:
            writes.append("refused")

    hooked = _fit(data, meddle, lhs="full", factors=4, max_per_user=10)
    assert writes and set(writes) == {"refused"}
    for a in ("noisy_counts_", "head_items_"):
        assert np.array_equal(getattr(plain, a), getattr(hooked, a)), a
    # the factors up to float32 rounding: two seeded fits can differ in the last bits (threaded
    # user solves and BLAS are not bit-reproducible); a write through the hook would move them O(1)
    for a in ("item_factors_", "user_factors_"):
        np.testing.assert_allclose(
            getattr(plain, a), getattr(hooked, a), rtol=1e-4, atol=1e-6, err_msg=a
        )
    assert plain.privacy_guarantee.epsilon == hooked.privacy_guarantee.epsilon
    # a fit argument, not a hyper-parameter: nothing of it is kept or saved
    assert "on_release" not in hooked.get_params()
    assert hooked._on_release is None


def test_hook_exception_aborts_the_fit_and_is_cleared(data: Interactions) -> None:
    def boom(r: Release) -> None:
        raise RuntimeError("stop")

    m = DPALS(epsilon=2.0, delta=1e-5, unit="user", factors=4, max_per_user=10, seed=0)
    with pytest.raises(RuntimeError, match="stop"):
        m.fit(data, on_release=boom)
    assert m._on_release is None
