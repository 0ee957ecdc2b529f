"""A deletion request written in another Unicode form than the data's id still drops the person."""

from __future__ import annotations

import unicodedata
from typing import Literal

import numpy as np
import pytest
import scipy.sparse as sp

from privrec.data.interactions import Interactions

from .conftest import LedgerSetup


def _data(users: list[str]) -> Interactions:
    m = sp.csr_matrix(np.ones((len(users), 3), dtype=np.float32))
    return Interactions(m, np.array(users, dtype=object), np.array(["a", "b", "c"], dtype=object))


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("asked", "held"), [("NFC", "NFD"), ("NFD", "NFC")])
def test_forget_in_another_unicode_form_drops_the_person(
    setup: LedgerSetup, asked: Literal["NFC", "NFD"], held: Literal["NFC", "NFD"]
) -> None:
    name = "José Müller"
    setup.owner.forget("ratings", unicodedata.normalize(asked, name))  # before any load
    loaded = setup.analyst.load("ratings", _data([unicodedata.normalize(held, name), "7"]))
    assert list(loaded.interactions.user_ids) == ["7"]
    assert loaded.report.step("deletion").users_dropped == 1


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_other_people_are_kept(setup: LedgerSetup) -> None:
    setup.owner.forget("ratings", "Jose")  # no accent: another id
    loaded = setup.analyst.load("ratings", _data([unicodedata.normalize("NFD", "José"), "7"]))
    assert len(loaded.interactions.user_ids) == 2


def test_every_policy_path_uses_the_same_rule() -> None:
    """The engine's workers apply the policy themselves: ``deletions_in`` is what they (and the
    ledger's load and policy check) pass as the deleted hashes."""
    from privrec.governance.db import deletions_in, user_digests

    key = b"k" * 32
    ids = np.array([unicodedata.normalize("NFD", "Zoë"), "Zoe", 7], dtype=object)
    digests = user_digests(key, ids)
    asked = user_digests(key, [unicodedata.normalize("NFC", "Zoë")])
    out = deletions_in(key, ids, digests, asked)
    assert np.isin(digests, out).tolist() == [True, False, False]
    empty = np.zeros(0, dtype=np.uint64)
    assert deletions_in(key, ids, digests, empty) is empty
