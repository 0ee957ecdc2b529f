"""Every loader format against generated valid files and hostile mutations of them.

Valid files must load to exactly what was written (ids, their types, values,
timestamps); mutated files must either load to exactly what the format's
reference parser says they hold, or raise ``DataError`` on the line the
reference names — never another exception, a hang or silently different
data. Generators, mutators and the reference parser live in
``loader_cases.py``, ``loader_reference.py`` and
``loader_campaign.py`` (which also runs the long campaign).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .loader_campaign import FAILURES, _same, campaign, check, show
from .loader_cases import ALL_FORMATS, Ok, generate, mutate
from .loader_reference import reference

FUZZ = settings.get_profile("privrec-fuzz")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@settings(FUZZ)
@given(rnd=st.randoms(use_true_random=False))
def test_valid_input_round_trips(fmt: str, rnd: random.Random, folder: Path) -> None:
    case = generate(rnd, fmt)
    assert case.truth is not None
    ref = reference(case)  # the reference parser must agree with the generator too
    assert isinstance(ref, Ok) and _same(ref, case.truth), f"reference: {ref}\n{show(case)}"
    out = check(case, folder)
    assert out.kind == "accepted, equal", f"{out.kind}: {out.detail}\n{show(case)}"


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@settings(FUZZ, max_examples=FUZZ.max_examples * 2)
@given(rnd=st.randoms(use_true_random=False))
def test_hostile_input_gives_typed_error_or_exact_data(
    fmt: str, rnd: random.Random, folder: Path
) -> None:
    case = mutate(rnd, generate(rnd, fmt))
    out = check(case, folder)
    assert out.kind not in FAILURES, f"{out.kind}: {out.detail}\n{show(case)}"


def test_campaign_counts_every_outcome() -> None:
    res = campaign(tries=60, seed=11)
    assert sum(res["counts"].values()) == 60
    assert all(res["counts"][k] == 0 for k in FAILURES), res["failures"]
    assert res["counts"]["accepted, equal"] > 0
    assert res["counts"]["typed error, line and field"] > 0
