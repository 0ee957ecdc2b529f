"""Neighbour graph (regular, symmetric, public-seeded) and the (k, t) parameter rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from privrec.errors import ConfigError
from privrec.secure import choose_parameters, neighbour_graph
from privrec.secure.graph import resolve_count
from privrec.secure.prg import add_mask, expand, word_dtype


@given(n=st.integers(3, 60), k=st.integers(1, 60), seed=st.binary(min_size=16, max_size=16))
def test_graph_is_k_regular_and_symmetric(n: int, k: int, seed: bytes) -> None:
    if k % 2 and n % 2 and k < n - 1:
        with pytest.raises(ConfigError):
            neighbour_graph(list(range(n)), k, seed)
        return
    g = neighbour_graph(list(range(n)), k, seed)
    degree = min(k, n - 1)
    assert set(g) == set(range(n))
    for u, vs in g.items():
        assert len(vs) == len(set(vs)) == degree
        assert u not in vs
        assert all(u in g[v] for v in vs)


def test_graph_is_a_function_of_the_public_seed() -> None:
    ids = list(range(100))
    a = neighbour_graph(ids, 10, b"a" * 16)
    assert a == neighbour_graph(list(reversed(ids)), 10, b"a" * 16)
    assert a != neighbour_graph(ids, 10, b"b" * 16)


def test_graph_stays_connected_without_a_few_nodes() -> None:
    # A Harary graph H(k, n) is k-connected: removing k - 1 nodes never disconnects it.
    g = neighbour_graph(list(range(50)), 6, b"c" * 16)
    removed = set(range(0, 50, 10))  # 5 < 6 removed
    alive = set(g) - removed
    start = next(iter(alive))
    seen, todo = {start}, [start]
    while todo:
        for v in g[todo.pop()]:
            if v in alive and v not in seen:
                seen.add(v)
                todo.append(v)
    assert seen == alive


def test_parameter_choice_is_logarithmic_and_explained() -> None:
    small = choose_parameters(100, 0.05, 0.05)
    big = choose_parameters(1000, 0.05, 0.05)
    huge = choose_parameters(100_000, 0.05, 0.05)
    assert small.neighbours < big.neighbours < huge.neighbours < 120
    for p in (small, big, huge):
        assert 2 <= p.threshold <= p.neighbours
        assert p.leak_probability <= 2**-40
        assert p.abort_probability <= 2**-20
        assert f"t={p.threshold}" in p.explanation
    # more dropouts need more neighbours; a malicious server needs a higher threshold
    assert choose_parameters(1000, 0.2, 0.05).neighbours > big.neighbours
    strict = choose_parameters(1000, 0.05, 0.05, malicious_server=True)
    assert strict.threshold > (strict.neighbours + 0) / 2
    # int = count, float = fraction
    assert choose_parameters(1000, 50, 50) == big
    # tiny rounds fall back to the complete graph
    tiny = choose_parameters(6, 1, 1)
    assert tiny.neighbours == 5
    assert "complete graph" in tiny.explanation


def test_parameter_choice_rejects_impossible_settings() -> None:
    with pytest.raises(ConfigError):
        choose_parameters(2)
    with pytest.raises(ConfigError):
        choose_parameters(10, 0.5, 0.5)
    with pytest.raises(ConfigError):
        resolve_count(1.5, 10, "x")
    with pytest.raises(ConfigError):
        resolve_count(True, 10, "x")
    assert resolve_count(0.05, 1000, "x") == 50
    assert resolve_count(7, 1000, "x") == 7


def test_prg_is_deterministic_per_seed_and_sized_by_bits() -> None:
    seed = bytes(range(32))
    a = expand(seed, 1000, 32)
    assert a.dtype == word_dtype(32) and a.shape == (1000,)
    assert (a == expand(seed, 1000, 32)).all()
    assert not (a == expand(bytes(32), 1000, 32)).all()
    # in-place accumulation uses the same stream and wraps modulo the word size
    acc = np.full(1000, 2**32 - 1, dtype=np.uint32)
    add_mask(acc, seed)
    np.testing.assert_array_equal(acc, a - np.uint32(1))
    add_mask(acc, seed, subtract=True)
    assert (acc == 2**32 - 1).all()
    # a longer stream extends a shorter one (counter mode)
    assert (expand(seed, 2000, 32)[:1000] == a).all()
    assert word_dtype(1).itemsize == 1 and word_dtype(9).itemsize == 2
    assert word_dtype(33).itemsize == 8
    with pytest.raises(ConfigError):
        word_dtype(65)
    with pytest.raises(ConfigError):
        expand(b"short", 10, 8)
