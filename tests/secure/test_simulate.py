"""The in-process simulator: correct sums, accounting of dropouts, bytes and time."""

from __future__ import annotations

import numpy as np
import pytest

from privrec.errors import ConfigError, InvalidInputError, ProtocolAbort
from privrec.federated import simulate_secagg


def test_simulation_sums_survivors_with_per_phase_dropout() -> None:
    drop = {"share_keys": 2, "masked_input": 0.1, "unmask": 1}
    r = simulate_secagg(40, 300, bits=20, dropout=drop, seed=3)
    assert r.exact
    assert r.sum.dtype == np.uint64 and int(r.sum.max()) < 2**20
    assert len(r.dropped["share_keys"]) == 2
    assert len(r.dropped["masked_input"]) == 4  # 10 % of the 38 still present
    assert len(r.dropped["unmask"]) == 1
    assert len(r.survivors) == 34
    assert set(r.survivors).isdisjoint(r.dropped["masked_input"])
    assert r.bytes_up.shape == (40,) and (r.bytes_up[list(r.survivors)] > 300 * 4).all()
    assert r.timings["client"]["total"] > 0 and r.timings["server"]["unmask"] > 0
    assert r.server_stats["reconstructed_keys"] == 4


def test_given_inputs_and_seed_controls_only_the_simulation() -> None:
    x = np.arange(5 * 7, dtype=np.uint32).reshape(5, 7)
    a = simulate_secagg(5, 7, bits=16, dropout=1, neighbours=4, threshold=2, inputs=x, seed=1)
    b = simulate_secagg(5, 7, bits=16, dropout=1, neighbours=4, threshold=2, inputs=x, seed=1)
    assert a.survivors == b.survivors  # same simulated dropouts
    assert a.exact and b.exact
    np.testing.assert_array_equal(a.sum, x[list(a.survivors)].sum(axis=0) % 2**16)


def test_dropout_beyond_threshold_aborts() -> None:
    with pytest.raises(ProtocolAbort):
        simulate_secagg(8, 10, dropout={"unmask": 5}, neighbours=4, threshold=3)


def test_simulation_validates_arguments() -> None:
    with pytest.raises(ConfigError):
        simulate_secagg(5, 3, dropout={"bogus": 0.1})
    with pytest.raises(InvalidInputError):
        simulate_secagg(5, 3, inputs=np.zeros((4, 3), np.uint8))
    with pytest.raises(InvalidInputError):
        simulate_secagg(5, 3, bits=8, inputs=np.full((5, 3), 300))
