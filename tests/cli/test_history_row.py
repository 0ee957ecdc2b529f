"""``Recommender.history_row`` from ids as text: what a CSV, JSON or a command line gives.

An integer catalogue given ``["1", "2"]`` raised UnknownItemError — and with
``ignore_unknown=True`` silently returned an empty history, so the recommendation was the
empty-history one. The service already matches an id by its text (``str(5) == "5"``).
"""

from __future__ import annotations

import numpy as np
import pytest

from privrec.data.interactions import Interactions
from privrec.data.synthetic import synthetic
from privrec.errors import UnknownItemError
from privrec.models import Popularity


def test_text_ids_name_integer_items() -> None:
    m = Popularity().fit(synthetic(n_users=40, n_items=15, seed=0))
    ids = np.asarray(m.item_ids_)
    assert np.issubdtype(ids.dtype, np.integer)
    want = m.history_row(ids[:2])
    text = [str(v) for v in ids[:2].tolist()]
    assert np.array_equal(m.history_row(text), want)
    assert np.array_equal(m.history_row(text, ignore_unknown=True), want)
    with pytest.raises(UnknownItemError):
        m.history_row(["1.5"])
    assert m.history_row(["1.5", "x"], ignore_unknown=True).sum() == 0


def test_integer_ids_name_text_items_without_cutting_them() -> None:
    data = Interactions.from_arrays(["u1", "u1", "u2"], ["5", "12345", "7"])
    m = Popularity().fit(data)
    assert m.history_row([5]).sum() == 1 and m.history_row([12345]).sum() == 1
    with pytest.raises(UnknownItemError):
        m.history_row([1234])  # not "12345" cut to the catalogue's width
