"""Policy: exact counts for deletion, consent, retention and minimisation; malformed files."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from privrec.data import Interactions
from privrec.errors import DataError, PolicyError, PolicyViolation, PrivacyWarning
from privrec.governance.policy import load_policy, policy_from_dict, read_consents

from .conftest import POLICY, make_setup

DAY = 86400.0


def dataset(now: float) -> Interactions:
    """12 users; user u has u+1 interactions, item j of user u is j*10 days old (u0: 1, u11: 12)."""
    users, items, ts, vals = [], [], [], []
    for u in range(12):
        for j in range(u + 1):
            users.append(f"u{u}")
            items.append(f"i{j}")
            ts.append(now - j * 10 * DAY - 3600)
            vals.append(float(1 + j % 5))
    return Interactions.from_arrays(users, items, vals, ts)


def _policy(**extra: object) -> dict[str, object]:
    return {**POLICY, "columns": ["user", "item", "value", "timestamp"], **extra}


def test_counts_are_exact_through_the_ledger(ledger_url: str, tmp_path: Path) -> None:
    now = time.time()
    pol = _policy(
        retention_days=45,  # keeps ages 0,10,20,30,40 days: at most 5 per user
        max_interactions_per_user=3,
        consent={"required": True},
    )
    s = make_setup(ledger_url, pol)
    data = dataset(now)
    # consent for u1..u11, then u2 withdraws; u3 asks to be forgotten
    s.owner.import_consents("ratings", [(f"u{u}", True) for u in range(1, 12)], source="crm")
    s.owner.import_consents("ratings", [("u2", False)], source="crm")
    s.owner.forget("ratings", "u3")
    g = s.analyst.load("ratings", data)
    r = g.report
    assert (r.users_in, r.interactions_in) == (12, 78)
    assert (r.step("deletion").users_dropped, r.step("deletion").interactions_dropped) == (1, 4)
    # u0 never consented (1 interaction), u2 withdrew (3)
    assert (r.step("consent").users_dropped, r.step("consent").interactions_dropped) == (2, 4)
    # remaining users u1, u4..u11: interactions older than 45 days are those with j >= 5
    expected_old = sum(max(0, u + 1 - 5) for u in [1, *range(4, 12)])
    assert r.step("retention").interactions_dropped == expected_old
    expected_over = sum(max(0, min(u + 1, 5) - 3) for u in [1, *range(4, 12)])
    assert r.step("minimisation").interactions_dropped == expected_over
    assert r.step("empty").users_dropped == 0
    assert r.users_out == 9 and r.interactions_out == 78 - 4 - 4 - expected_old - expected_over
    x = g.interactions
    assert set(x.user_ids) == {"u1", *(f"u{u}" for u in range(4, 12))}
    assert int(x.user_counts.max()) == 3
    # the most recent three are kept: every kept interaction is at most 20 days old
    assert x.timestamps is not None and float(x.timestamps.min()) >= now - 20 * DAY - 3601
    # the report holds counts only
    assert "u1" not in r.model_dump_json()


def test_columns_not_allowed_are_dropped(ledger_url: str) -> None:
    s = make_setup(ledger_url)  # columns = user, item
    g = s.analyst.load("ratings", dataset(time.time()))
    assert g.interactions.timestamps is None
    assert set(np.unique(g.interactions.matrix.data)) == {1.0}
    assert g.report.columns_dropped == ("value", "timestamp")


def test_consent_from_a_csv_file(ledger_url: str, tmp_path: Path) -> None:
    csv = tmp_path / "consents.csv"
    csv.write_text("user,consent\nu5,yes\nu6,granted\nu7,true\nu6,revoked\n")
    s = make_setup(ledger_url, _policy(consent={"required": True, "source": str(csv)}))
    g = s.analyst.load("ratings", dataset(time.time()))
    assert sorted(g.interactions.user_ids) == ["u5", "u7"]
    assert g.report.step("consent").users_dropped == 10
    # a withdrawal in the file after the load: the loaded data can no longer be charged
    import dp_accounting

    from privrec.privacy.events import SpentEvent

    event = [SpentEvent("q", dp_accounting.GaussianDpEvent(50.0))]
    s.analyst.reserve("ratings", event, data=g)  # unchanged file: fine
    csv.write_text(csv.read_text() + "u7,withdrawn\n")
    with pytest.raises(PolicyViolation, match=r"consent file .* changed"):
        s.analyst.reserve("ratings", event, data=g)
    again = s.analyst.load("ratings", dataset(time.time()))
    assert sorted(again.interactions.user_ids) == ["u5"]
    s.analyst.reserve("ratings", event, data=again)


def test_retention_without_timestamps_is_refused(ledger_url: str) -> None:
    s = make_setup(ledger_url, _policy(retention_days=10))
    no_ts = Interactions.from_arrays(["a", "b"], ["x", "y"])
    with pytest.raises(PolicyViolation, match="no timestamps"):
        s.analyst.load("ratings", no_ts)
    assert s.owner.dataset("ratings").versions == 0


def test_minimisation_without_timestamps_is_reproducible() -> None:
    from privrec.governance.db import user_digests
    from privrec.governance.policy import apply_policy

    data = Interactions.from_arrays(np.repeat(np.arange(5), 10), np.tile(np.arange(10), 5))
    pol = policy_from_dict({**POLICY, "max_interactions_per_user": 4})
    kw = {
        "user_digests": user_digests(b"k", data.user_ids),
        "deleted": np.zeros(0, np.uint64),
        "consented": None,
        "now": 0.0,
    }
    a, rep = apply_policy(data, pol, **kw)  # type: ignore[arg-type]
    b, _ = apply_policy(data, pol, **kw)  # type: ignore[arg-type]
    assert a.nnz == 20 and rep.step("minimisation").interactions_dropped == 30
    assert np.array_equal(a.matrix.indices, b.matrix.indices)


def test_minimisation_keeps_what_depends_on_the_user_alone() -> None:
    """Without timestamps the kept interactions of a user depend on that user's (id, item)
    pairs only: removing another user — or one interaction of another user, or reordering the
    rows — changes nothing else, so a neighbouring dataset differs in one user's rows only (the
    sensitivities every mechanism states). It once ranked by position in the whole data: one
    removed user changed the kept history of most of the others."""
    from privrec.governance.db import user_digests
    from privrec.governance.policy import apply_policy

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(120), rng.integers(5, 30, size=120))
    items = rng.integers(0, 60, size=users.size)
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)
    pol = policy_from_dict({**POLICY, "max_interactions_per_user": 6})

    def kept(u: np.ndarray, i: np.ndarray) -> dict[str, set[str]]:
        data = Interactions.from_arrays([f"u{x}" for x in u], [f"i{x}" for x in i])
        out, _ = apply_policy(
            data, pol, user_digests=user_digests(b"k", data.user_ids),
            deleted=np.zeros(0, np.uint64), consented=None, now=0.0,
        )  # type: ignore[arg-type]  # fmt: skip
        m = out.matrix
        return {
            str(out.user_ids[r]): {
                str(out.item_ids[c]) for c in m.indices[m.indptr[r] : m.indptr[r + 1]]
            }
            for r in range(out.n_users)
        }

    full = kept(pairs[:, 0], pairs[:, 1])
    assert all(len(v) <= 6 for v in full.values())
    for drop in (0, 7, 119):
        rest = pairs[pairs[:, 0] != drop]
        assert kept(rest[:, 0], rest[:, 1]) == {k: v for k, v in full.items() if k != f"u{drop}"}
    one_less = np.delete(pairs, 3, axis=0)  # one interaction of user 0
    changed = {k for k, v in kept(one_less[:, 0], one_less[:, 1]).items() if full[k] != v}
    assert changed <= {"u0"}
    shuffled = pairs[rng.permutation(len(pairs))]
    assert kept(shuffled[:, 0], shuffled[:, 1]) == full


def test_a_cap_needs_the_user_unit() -> None:
    with pytest.raises(PolicyError, match="unit = 'user'"):
        policy_from_dict({**POLICY, "unit": "interaction", "max_interactions_per_user": 5})


BAD = {
    "not toml": ("purpose = ", "not valid TOML"),
    "unknown field": ('purpose="p"\nunit="user"\ncolour="red"\n[budget]\nepsilon=1\ndelta=1e-6\n', "unknown field 'colour'"),
    "no budget": ('purpose="p"\nunit="user"\n', "missing required field 'budget'"),
    "negative epsilon": ('purpose="p"\nunit="user"\n[budget]\nepsilon=-1\ndelta=1e-6\n', "budget.epsilon"),
    "bad unit": ('purpose="p"\nunit="household"\n[budget]\nepsilon=1\ndelta=1e-6\n', "'unit'"),
    "no item column": ('purpose="p"\nunit="user"\ncolumns=["user"]\n[budget]\nepsilon=1\ndelta=1e-6\n', "must include 'user' and 'item'"),
    "zero retention": ('purpose="p"\nunit="user"\nretention_days=0\n[budget]\nepsilon=1\ndelta=1e-6\n', "retention_days"),
    "nan epsilon": ('purpose="p"\nunit="user"\n[budget]\nepsilon=nan\ndelta=1e-6\n', "budget.epsilon"),
    "infinite epsilon": ('purpose="p"\nunit="user"\n[budget]\nepsilon=inf\ndelta=1e-6\n', "budget.epsilon"),
    "zero epsilon": ('purpose="p"\nunit="user"\n[budget]\nepsilon=0\ndelta=1e-6\n', "budget.epsilon"),
    "delta of one": ('purpose="p"\nunit="user"\n[budget]\nepsilon=1\ndelta=1.0\n', "budget.delta"),
    "nan delta": ('purpose="p"\nunit="user"\n[budget]\nepsilon=1\ndelta=nan\n', "budget.delta"),
    "boolean epsilon": ('purpose="p"\nunit="user"\n[budget]\nepsilon=true\ndelta=1e-6\n', "budget.epsilon"),
    "string epsilon": ('purpose="p"\nunit="user"\n[budget]\nepsilon="1"\ndelta=1e-6\n', "budget.epsilon"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_policy_files_are_one_line_errors(case: str, tmp_path: Path) -> None:
    text, expected = BAD[case]
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        ("epsilon=1e308\ndelta=1e-6", r"epsilon=1e\+308 is a weak"),
        ("epsilon=1\ndelta=0.5", "delta=0.5"),
    ],
)
def test_a_policy_file_with_a_weak_cap_warns(cap: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(f'purpose="p"\nunit="user"\n[budget]\n{cap}\n')
    with pytest.warns(PrivacyWarning, match=expected):
        load_policy(path)
    path.write_text('purpose="p"\nunit="user"\n[budget]\nepsilon=2\ndelta=1e-6\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        assert load_policy(path).budget.epsilon == 2.0


def test_missing_policy_file() -> None:
    with pytest.raises(PolicyError, match="not found"):
        load_policy("/nonexistent/policy.toml")


def test_bad_consent_files_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("user,consent\na,yes\nb,maybe\n")
    with pytest.raises(DataError, match="line 3") as info:
        read_consents(p)
    # the field and line only: a row's contents may be a person's id (the message reaches
    # analysts), so the value itself is not repeated
    assert "'consent'" in str(info.value) and "maybe" not in str(info.value)
    p.write_text("id,ok\n")
    with pytest.raises(DataError, match="missing column"):
        read_consents(p)
