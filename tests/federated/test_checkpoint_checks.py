"""A FederatedMF checkpoint is checked against its own records before it is resumed.

Each test saves a real checkpoint, opens the file, edits one thing (the head, the accountant's
records, the round count) and checks that loading it is refused with a typed error; the
unedited file resumes exactly where the server left off.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest

from privrec.errors import CheckpointMismatchError, DataError
from privrec.federated import FederatedMFConfig, FederatedMFServer
from privrec.privacy.events import SpentEvent

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")

Arrays = dict[str, np.ndarray]
Meta = dict[str, Any]


def _server(rounds_done: int = 2, **kw: Any) -> FederatedMFServer:
    """A distributed-DP server whose learnable-head rule fired (fewer items than planned)."""
    cfg = FederatedMFConfig.create(epsilon=1.0, head_items=500, factors=4, rounds=4, seed=0, **kw)
    srv = FederatedMFServer(cfg, n_items=2000, population=10_000)
    counts = 10_000 * 0.2 / (1.0 + np.arange(srv.n_items)) ** 0.8
    payload = np.zeros(srv.count_dim)
    payload[: srv.n_items] = counts / srv.count_scale
    srv.select_head(payload, survivors=10_000, sampled=10_000)
    rng = np.random.default_rng(1)
    for _ in range(rounds_done):
        top = srv.max_clients
        srv.apply(
            rng.standard_normal(srv.item_factors.size),
            srv.expected_clients,
            srv.expected_clients / 2,
            survivors=top,
            sampled=top,
        )
    return srv


def _read(path: Path) -> tuple[Arrays, Meta]:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    return arrays, meta


def _tamper(path: Path, edit: Callable[[Arrays, Meta], None]) -> Path:
    """Open the checkpoint file, apply ``edit`` to its arrays and metadata, write it back."""
    arrays, meta = _read(path)
    edit(arrays, meta)
    out = path.with_name("edited-" + path.name)
    with out.open("wb") as fh:
        np.savez(fh, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[FederatedMFServer, Path]:
    srv = _server()
    assert srv.head_items is not None and srv.payload_rows is not None
    assert 100 <= srv.head_items.size < srv.payload_rows == 500  # the rule fired
    return srv, srv.save(tmp_path_factory.mktemp("ck") / "server.npz")


def test_unedited_checkpoint_resumes_identically(saved: tuple[FederatedMFServer, Path]) -> None:
    srv, path = saved
    back = FederatedMFServer.load(path, population=10_000)
    assert back.head_items is not None and srv.head_items is not None
    np.testing.assert_array_equal(back.head_items, srv.head_items)
    assert back.payload_rows == srv.payload_rows and back.round == srv.round == 2
    assert [e.to_dict() for e in back.spent] == [e.to_dict() for e in srv.spent]
    # one more round on the original and on the resumed copy: the same state after it
    step = np.random.default_rng(7).standard_normal(srv.item_factors.size)
    ref = FederatedMFServer.load(
        path, population=10_000
    )  # the original must stay usable by later tests
    for s in (ref, back):
        s.apply(step, s.expected_clients, 3.0, survivors=s.max_clients, sampled=s.max_clients)
    np.testing.assert_array_equal(back.item_factors, ref.item_factors)
    assert back.clip_norm == ref.clip_norm and back.epsilon() == ref.epsilon()
    assert back.spent[-1].label == "rounds 1-3"


def _grow_head(arrays: Arrays, meta: Meta) -> None:
    """A consistent-looking edit: the whole planned head trained, factors and moments resized."""
    k = meta["config"]["factors"]
    arrays["head_items"] = np.arange(500, dtype=np.int64)
    arrays["item_factors"] = np.zeros((500, k))
    arrays["adam_m"] = np.zeros(500 * k)
    arrays["adam_v"] = np.zeros(500 * k)


def _swap_item(arrays: Arrays, meta: Meta) -> None:
    """Same size, one trained item replaced by one the rule did not choose."""
    head = arrays["head_items"].copy()
    head[-1] = 1999
    arrays["head_items"] = np.sort(head)


def _short_lengths(arrays: Arrays, meta: Meta) -> None:
    """The histogram edited to say every user has one item (the counts then overstate holders)."""
    lengths = np.zeros_like(arrays["noisy_lengths"])
    lengths[0] = 10_000.0
    arrays["noisy_lengths"] = lengths


def test_edited_length_histogram_is_refused(tmp_path: Path) -> None:
    """The head rule reads the histogram too (the holder weight): editing it changes the head."""
    cfg = FederatedMFConfig.create(epsilon=1.0, head_items=500, factors=4, rounds=4, seed=0)
    srv = FederatedMFServer(cfg, n_items=2000, population=10_000)
    payload = np.zeros(srv.count_dim)
    payload[: srv.n_items] = 4_000 / (1.0 + np.arange(srv.n_items)) ** 0.8 / srv.count_scale
    payload[srv.n_items + 6] = 10_000 / srv.count_scale  # everyone has 32-63 items: weight 1
    srv.select_head(payload, survivors=10_000, sampled=10_000)
    assert srv.head_items is not None and 100 < srv.head_items.size < 500
    path = srv.save(tmp_path / "server.npz")
    assert FederatedMFServer.load(path, population=10_000).head_items.size == srv.head_items.size  # type: ignore[union-attr]
    with pytest.raises(CheckpointMismatchError) as info:
        FederatedMFServer.load(_tamper(path, _short_lengths), population=10_000)
    assert info.value.field == "head_items"


def test_misshapen_length_histogram_is_refused(saved: tuple[FederatedMFServer, Path]) -> None:
    _, path = saved
    with pytest.raises(DataError) as info:
        FederatedMFServer.load(
            _tamper(path, lambda a, m: a.update(noisy_lengths=np.ones(3))), population=10_000
        )
    assert info.value.field == "noisy_lengths"


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_grow_head, "head_items"),
        (_swap_item, "head_items"),
        (lambda a, m: m.update(payload_rows=len(a["head_items"])), "head_items"),
        (lambda a, m: m.update(head_rounds=10_000), "head_items"),  # another T, another head
        (lambda a, m: m.update(public_head=True), "public_head"),  # the flag alone is refused
        (lambda a, m: a.pop("noisy_counts"), "noisy_counts"),  # a private head, nothing to check
    ],
    ids=["grown", "swapped", "payload-rows", "head-rounds", "public-flag", "no-counts"],
)
def test_edited_head_is_refused(
    saved: tuple[FederatedMFServer, Path], edit: Callable[[Arrays, Meta], None], field: str
) -> None:
    _, path = saved
    with pytest.raises(CheckpointMismatchError) as info:
        FederatedMFServer.load(_tamper(path, edit), population=10_000)
    assert info.value.field == field


def test_a_public_head_must_be_confirmed_by_the_caller(tmp_path: Path) -> None:
    cfg = FederatedMFConfig.create(noise_multiplier=1.0, head_items=5, factors=2, seed=0)
    head = np.array([1, 3, 5, 7, 9])
    srv = FederatedMFServer(cfg, n_items=20, population=100, head_items=head)
    srv.select_head(np.zeros(srv.count_dim), survivors=100, sampled=100)
    path = srv.save(tmp_path / "server.npz")
    with pytest.raises(CheckpointMismatchError, match="public"):
        FederatedMFServer.load(path, population=100)
    back = FederatedMFServer.load(path, public_head=head, population=100)
    np.testing.assert_array_equal(back.head_items, head)
    with pytest.raises(CheckpointMismatchError, match="public head passed"):
        FederatedMFServer.load(path, public_head=np.array([0, 1, 2, 3, 4]), population=100)


def _cut_one_round(arrays: Arrays, meta: Meta) -> None:
    ev = SpentEvent.from_dict(meta["spent"][-1])
    assert isinstance(ev.event, dp_accounting.SelfComposedDpEvent)
    one_less = dp_accounting.SelfComposedDpEvent(ev.event.event, ev.event.count - 1)
    meta["spent"][-1] = SpentEvent("round 1", one_less).to_dict()
    meta["runs"][-1] -= 1


def _weaker_rounds(arrays: Arrays, meta: Meta) -> None:
    """Same round count, each round recorded with ten times the noise it had."""
    ev = SpentEvent.from_dict(meta["spent"][-1])
    assert isinstance(ev.event, dp_accounting.SelfComposedDpEvent)
    weak = dp_accounting.PoissonSampledDpEvent(
        meta["config"]["sampling_rate"] or 0.1,
        dp_accounting.GaussianDpEvent(10 * meta["noise_multiplier"]),
    )
    meta["spent"][-1] = SpentEvent(ev.label, dp_accounting.SelfComposedDpEvent(weak, 2)).to_dict()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_cut_one_round, "number of rounds"),
        (lambda a, m: m.update(round=m["round"] + 1), "number of rounds"),  # rounds not charged
        (lambda a, m: (m["spent"].pop(0), m["runs"].pop(0)), "smaller epsilon"),  # counts free
        (_weaker_rounds, "smaller epsilon"),
        (lambda a, m: m["runs"].append(1), "run lengths"),
    ],
    ids=["one-round-cut", "round-count-raised", "count-charge-dropped", "weaker-events", "runs"],
)
def test_cut_accountant_records_are_refused(
    saved: tuple[FederatedMFServer, Path], edit: Callable[[Arrays, Meta], None], match: str
) -> None:
    _, path = saved
    with pytest.raises(CheckpointMismatchError, match=match):
        FederatedMFServer.load(_tamper(path, edit), population=10_000)


def test_records_that_charge_more_are_kept(saved: tuple[FederatedMFServer, Path]) -> None:
    """Records in another form that charge the rounds done at no smaller ε (e.g. written by an
    older release, each round its own record) are accepted as they are."""
    srv, path = saved

    def split(arrays: Arrays, meta: Meta) -> None:
        ev = SpentEvent.from_dict(meta["spent"][-1])
        assert isinstance(ev.event, dp_accounting.SelfComposedDpEvent)
        one = dp_accounting.SelfComposedDpEvent(ev.event.event, 1)
        meta["spent"][-1:] = [SpentEvent(f"round {r}", one).to_dict() for r in (1, 2)]
        meta["runs"][-1:] = [1, 1]

    back = FederatedMFServer.load(_tamper(path, split), population=10_000)
    assert len(back.spent) == 3
    assert back.epsilon() == pytest.approx(srv.epsilon(), rel=1e-9)


def test_lowered_noise_is_refused() -> None:
    """The noise multiplier lowered in the file, the records recomputed to match it: honestly
    accounted so far, but the remaining rounds would spend past the run's ε. (With the head
    rule on, a lowered multiplier also moves the rule's threshold, and the head check refuses
    it first; here the rule is off.)"""
    srv = _server(head_snr=None)
    lower = FederatedMFServer.from_state(
        *srv.state_dict(), population=10_000
    )  # unedited: within its ε
    lower.noise_multiplier /= 2
    lower.spent[-1] = SpentEvent(
        lower.spent[-1].label,
        dp_accounting.SelfComposedDpEvent(lower._charged_round_event(lower.noise_multiplier), 2),
    )
    with pytest.raises(CheckpointMismatchError, match="more than the run's epsilon"):
        FederatedMFServer.from_state(*lower.state_dict(), population=10_000)


def test_the_population_is_not_stored_and_must_match_the_sampling_rate(tmp_path: Path) -> None:
    """The checkpoint held the exact number of users (docs: no exact count of people); the
    caller passes it again and the stored, rounded sampling rate checks it."""
    srv = _server(rounds_done=1)
    path = srv.save(tmp_path / "server.npz")
    _, meta = _read(path)
    assert "population" not in meta and "10000" not in json.dumps(meta)
    with pytest.raises(CheckpointMismatchError, match="population is not the checkpoint's"):
        FederatedMFServer.load(path, population=5_000)
    assert FederatedMFServer.load(path, population=10_000).q == srv.q
