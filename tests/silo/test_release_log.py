"""Release counts kept across sessions (``--release-log``) and the retries the noise pays for.

A server or silo refuses more releases of a kind than the run plans; counted in memory, a
driver restarting the session was answered afresh (and could average repeated releases' noise
away). A release log keeps the count across sessions; a resumed run that redoes a step needs
``retries`` in the configuration, which the noise is sized for.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
import scipy.sparse as sp

from privrec.errors import ConfigError, PrivacyWarning, ProtocolAbort
from privrec.models.dp_als import dpals_event, resolve_iterations
from privrec.privacy.mechanisms import gaussian_event
from privrec.secure.release_log import FORMAT, ReleaseLog
from privrec.secure.silo import SiloConfig, SiloEASEConfig, run_local
from privrec.secure.silo_config import ease_noise, noise_scale, release_limits, run_fingerprint

N_ITEMS = 50
CONFIG = SiloConfig(epsilon=4.0, delta=1e-6, n_items=N_ITEMS, factors=4, iterations=3)


def test_counts_survive_a_new_session_and_runs_are_told_apart(tmp_path: Path) -> None:
    path = tmp_path / "server0.json"
    first = ReleaseLog(path, CONFIG)
    first.take("counts")
    first.take("stats")
    again = ReleaseLog(path, CONFIG)  # a restarted session (a new process in real life)
    assert again.answered("counts") == 1 and again.answered("stats") == 1
    with pytest.raises(ConfigError, match=r"beyond the 1 .*kept across sessions"):
        again.take("counts")
    again.take("stats")
    again.take("stats")
    with pytest.raises(ConfigError, match="beyond the 3"):
        again.take("stats")
    assert again.answered("stats") == 3  # a refusal counts nothing
    other = ReleaseLog(path, CONFIG.model_copy(update={"run_id": "second-run"}))
    other.take("counts")  # another run: its own counts
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT and len(doc["runs"]) == 2
    assert doc["runs"][run_fingerprint(CONFIG)] == {"counts": 1, "stats": 3}
    memory = ReleaseLog(None, CONFIG)  # no file: this object's life only
    memory.take("counts")
    with pytest.raises(ConfigError, match=r"beyond the 1 the configuration plans$"):
        memory.take("counts")
    assert ReleaseLog(None, CONFIG).answered("counts") == 0


def test_a_file_that_is_not_a_release_log_is_refused_and_left_alone(tmp_path: Path) -> None:
    for text in ('{"runs": {}}', "not json", '{"format": "privrec-release-log", "version": 1, '
                 '"runs": {"x": {"stats": -1}}}', "[]"):  # fmt: skip
        path = tmp_path / "log.json"
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"release log|not a privrec release log"):
            ReleaseLog(path, CONFIG)
        assert path.read_text() == text
    with pytest.raises(ConfigError, match="folder does not exist"):
        ReleaseLog(tmp_path / "nowhere" / "log.json", CONFIG)


def test_retries_are_paid_for_in_the_noise() -> None:
    """σ with r retries meets ε for the plan plus r more releases of each kind (RDP, as the
    configuration is accounted); r = 0 is the plan alone, as before."""
    sigma0, t = noise_scale(CONFIG)
    assert t == resolve_iterations(3, 4.0) == 3
    r = 2
    c = CONFIG.model_copy(update={"retries": r})
    sigma, _ = noise_scale(c)
    assert sigma > sigma0
    event = dp_accounting.ComposedDpEvent(
        [
            dpals_event(sigma, t + r, c.max_per_user, c.ratios),
            dp_accounting.SelfComposedDpEvent(gaussian_event(c.ratios[3] * sigma), r),
        ]
    )
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(event)
    assert acc.get_epsilon(c.delta) == pytest.approx(c.epsilon, rel=1e-3)
    assert release_limits(c) == {"counts": 1 + r, "stats": t + r}
    ease = SiloEASEConfig(epsilon=3.0, delta=1e-6, n_items=N_ITEMS, max_items=N_ITEMS)
    z0, zc0 = ease_noise(ease)
    z1, zc1 = ease_noise(ease.model_copy(update={"retries": 1}))
    assert zc0 is not None and zc1 is not None and z1 > z0 and zc1 > zc0
    assert release_limits(ease.model_copy(update={"retries": 1})) == {"counts": 2, "gram": 2}


def _matrices() -> list[sp.csr_matrix]:
    rng = np.random.default_rng(3)
    x = sp.csr_matrix((rng.random((180, N_ITEMS)) < 0.12).astype(np.float64))
    return [sp.csr_matrix(x[:90]), sp.csr_matrix(x[90:])]


def test_a_resumed_run_redoing_a_step_needs_retries(tmp_path: Path) -> None:
    """A server dies as step 2 starts, after the other server and the silos answered it: with
    release logs, the resumed run that redoes step 2 is refused unless the configuration pays
    for a retry — the restart no longer resets the count."""
    base: dict[str, Any] = dict(epsilon=4.0, delta=1e-6, n_items=N_ITEMS, factors=4, iterations=3,
                head_min=20, count_sample=1000, insecure_disable_noise=True)  # fmt: skip
    for retries, resumes in ((0, False), (1, True)):
        c = SiloConfig(**base, retries=retries)
        ck, logs = tmp_path / f"ck{retries}", tmp_path / f"logs{retries}"
        logs.mkdir()
        kw: dict[str, Any] = dict(checkpoint=ck, allow_no_noise=True, timeout=10, release_logs=logs)
        with pytest.raises(ProtocolAbort):
            run_local(_matrices(), c, crash_server_at_round=3, **kw)
        answered = json.loads((logs / "server0.json").read_text())["runs"]
        assert answered[run_fingerprint(c)] == {"counts": 1, "stats": 2}
        if resumes:
            result = run_local(_matrices(), c, resume=True, **kw)
            assert len(result.guarantee.events) == 1 + 3 * 3
        else:
            with pytest.raises((ProtocolAbort, ConfigError), match="beyond the 3"):
                run_local(_matrices(), c, resume=True, **kw)


def test_the_cli_warns_without_a_release_log_and_config_draws_a_run_id(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from privrec.cli.main import app
    from privrec.cli.silo import _unlogged

    with pytest.warns(PrivacyWarning, match="answered afresh"):
        _unlogged(None, "an aggregation server")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _unlogged(tmp_path / "log.json", "a silo")
    ids = set()
    for name in ("a.json", "b.json"):
        res = CliRunner().invoke(
            app,
            ["silo", "config", "--out", str(tmp_path / name), "--epsilon", "2", "--n-items",
             "30", "--retries", "1"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        doc = json.loads((tmp_path / name).read_text())
        assert doc["retries"] == 1 and doc["run_id"]
        ids.add(doc["run_id"])
    assert len(ids) == 2  # each run its own id: release logs count them apart


def test_a_release_the_servers_are_told_is_another_kind_is_noise_only(tmp_path: Path) -> None:
    """A driver asks the silos for the noisy counts and tells the servers it is a Gramian of
    the same length (10·11/2 = 55 items: less noise per coordinate, and counted as a Gramian):
    the first server expands the silos' seeds under the release its plan names, so the sum is
    uniformly random; told the truth, it decodes. A refused plan counts nothing."""
    from privrec.secure.prg import add_mask
    from privrec.secure.silo import AggregationServer, setup_keys
    from privrec.secure.silo_config import ease_noise_plan
    from privrec.secure.silo_roles import _bound_seed
    from privrec.secure.silo_wire import _pack, fixed_sigma, seed_share

    c = SiloEASEConfig(epsilon=3.0, delta=1e-6, n_items=55)
    z = ease_noise(c)
    assert _bound_seed(b"s" * 32, "counts", 0, 55) != _bound_seed(b"s" * 32, "gram", 10, 55)
    roster, ids = setup_keys(tmp_path, 1)
    server = AggregationServer(ids["server0"], roster, timeout=5, config=c)

    def plan(kind: str, n_head: int, scale: float = 1.0) -> bytes:
        segs = ease_noise_plan(c, z, kind, n_head)
        sig = [(s.length, scale * fixed_sigma(s, c.frac_bits)) for s in segs]
        return _pack({"dim": 55, "kind": kind, "n_head": n_head, "sigmas": sig, "protocol": 2})

    with pytest.raises(ConfigError, match="less noise"):
        server._check_plan(plan("gram", 10, 0.5))
    assert server._log.answered("gram") == 0  # refused before it was counted
    *_, lied = server._check_plan(plan("gram", 10))
    *_, told = server._check_plan(plan("counts", 0))
    assert lied == ("gram", 10, 55) and told == ("counts", 0, 55)
    server.listener.close()
    vec, seed = np.arange(55, dtype=np.uint64), b"\x07" * 32
    share = seed_share(vec.copy(), _bound_seed(seed, "counts", 0, 55))  # the silo's (job)
    for label, decodes in ((lied, False), (told, True)):
        acc = share.copy()
        add_mask(acc, _bound_seed(seed, *label))  # the first server's, under its plan
        assert np.array_equal(acc, vec) is decodes


def test_a_symlinked_log_counts_in_its_target_and_no_unpaid_counts(tmp_path: Path) -> None:
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    ReleaseLog(target, CONFIG).take("counts")
    link.symlink_to(target)
    ReleaseLog(link, CONFIG).take("stats")
    assert link.is_symlink()
    assert json.loads(target.read_text())["runs"][run_fingerprint(CONFIG)] == {
        "counts": 1,
        "stats": 1,
    }
    whole = SiloEASEConfig(epsilon=3.0, delta=1e-6, n_items=N_ITEMS, head_snr=0.0)
    assert not whole.restricted and ease_noise(whole)[1] is None
    assert release_limits(whole) == {"gram": 1}  # no noise is paid for a counts release


def test_parties_of_another_protocol_version_refuse_instead_of_summing_garbage() -> None:
    """Binding a share's mask to its release changed the wire protocol: a silo or server of
    the old version would silently sum garbage with a new one, so jobs and plans carry the
    version and a mismatch is refused."""
    from privrec.secure.silo_wire import PROTOCOL_VERSION, check_protocol

    check_protocol({"protocol": PROTOCOL_VERSION}, "server")
    for meta in ({}, {"protocol": 1}, {"protocol": "2"}):
        with pytest.raises(ConfigError, match="protocol version"):
            check_protocol(meta, "silo")


def test_a_step_journalled_but_not_saved_is_redone_within_the_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver crashing between journalling a step and saving its state redoes the step on
    resume: the journal holds it twice (the guarantee counts both), the configuration's
    retries pay for it, and the checkpoint stays resumable; without retries the repeat is
    refused with a reason."""
    from privrec.errors import CheckpointMismatchError
    from privrec.secure import silo_driver as sd

    base = dict(epsilon=4.0, delta=1e-6, n_items=N_ITEMS, factors=4, iterations=3,
                head_min=20, count_sample=1000)  # fmt: skip
    real = sd.Driver._save_state
    for retries in (1, 0):
        c = SiloConfig(**base, retries=retries)  # type: ignore[arg-type]
        ck, logs = tmp_path / f"ck{retries}", tmp_path / f"logs{retries}"
        logs.mkdir()
        saves = {"n": 0}

        def crash_at_step_2(self: object, saves: dict[str, int] = saves, **arrays: Any) -> None:
            saves["n"] += 1
            if saves["n"] == 3:  # counts saved, step 1 saved, step 2 journalled: crash
                raise KeyboardInterrupt("killed between the journal and the state")
            real(self, **arrays)  # type: ignore[arg-type]

        monkeypatch.setattr(sd.Driver, "_save_state", crash_at_step_2)
        with pytest.raises(KeyboardInterrupt):
            run_local(_matrices(), c, checkpoint=ck, timeout=10, release_logs=logs)
        monkeypatch.setattr(sd.Driver, "_save_state", real)
        if retries:
            first = run_local(_matrices(), c, checkpoint=ck, resume=True, timeout=10,
                              release_logs=logs)  # fmt: skip
            assert len(first.guarantee.events) == 1 + 4 * 3  # step 2 twice, both counted
            assert first.guarantee.epsilon <= c.epsilon
            again = run_local(_matrices(), c, checkpoint=ck, resume=True, timeout=10,
                              release_logs=logs)  # fmt: skip
            np.testing.assert_array_equal(again.item_factors, first.item_factors)
        else:
            with pytest.raises((ProtocolAbort, ConfigError), match="beyond the 3"):
                run_local(_matrices(), c, checkpoint=ck, resume=True, timeout=10,
                          release_logs=logs)  # fmt: skip
            with pytest.raises(CheckpointMismatchError, match="more than the configuration's 0"):
                run_local(_matrices(), c, checkpoint=ck, resume=True, timeout=10,
                          release_logs=logs)  # fmt: skip
