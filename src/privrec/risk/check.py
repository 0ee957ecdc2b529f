"""``privrec check``: the privacy checks a team's CI runs on its artifacts (and ledger).

For every model file given:

* its guarantee's ε is **re-derived from its recorded events** with dp-accounting and must
  equal the stated ε (a file edited by hand, or written by a buggy accountant, fails), and the
  guarantee must pass everything else the loader verifies (well-formed events and tiers; δ,
  unit, accountant, seed and ε agreeing with the model's parameters) — a relabelled
  guarantee re-derives the same ε, and the policy checks below would otherwise trust it;
* a file **marked for release** must not carry seeded noise (predictable noise is no
  noise), must be private, and must hold no training interactions unless the policy
  allows it;
* the **policy** (``max_epsilon``, ``max_delta``, required unit) holds;
* with a verify key (``[signing] verify_key`` or ``--verify-key``), the file is **signed by
  that key** and unchanged since (checked before anything else in the file is read; an
  unsigned, re-signed or edited file is a violation — the one check a consistent forgery of
  noise parameters and ε cannot pass).

With a ledger (``[ledger] url``): the audit-log hash chain verifies (optionally against a
pinned head), every charge's ε re-derives from its events, no budget's composed spend
exceeds its cap, and every release file is a recorded artifact whose recorded guarantee
and signer match the file's (a release re-signed or replaced after it was recorded — a file at
a recorded artifact's path naming another signer — is reported as such).

Every violation is one line; any violation makes the check fail.
"""

from __future__ import annotations

import glob
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic

from privrec.errors import ConfigError

__all__ = ["CheckConfig", "CheckReport", "Finding", "load_check_config", "run_check"]

_TOL = 1e-6


class _S(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class PolicySection(_S):
    max_epsilon: float | None = pydantic.Field(default=None, gt=0)
    max_delta: float | None = pydantic.Field(default=None, gt=0, lt=1)
    unit: Literal["user", "interaction"] | None = None
    allow_user_data: bool = False
    allow_non_private: bool = False


class LedgerSection(_S):
    url: str | None = None
    api_key: str | None = None
    expect_head: str | None = None


class SigningSection(_S):
    verify_key: str | None = None


class CheckConfig(_S):
    artifacts: list[str] = pydantic.Field(default_factory=list)
    release: list[str] = pydantic.Field(default_factory=list)
    policy: PolicySection = pydantic.Field(default_factory=PolicySection)
    ledger: LedgerSection = pydantic.Field(default_factory=LedgerSection)
    signing: SigningSection = pydantic.Field(default_factory=SigningSection)


def load_check_config(path: str | Path) -> CheckConfig:
    """Read ``check.toml``; relative artifact patterns are taken relative to its folder."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"check config {str(p)!r} not found")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"check config is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError("check config is nested too deeply to be a check config") from None
    try:
        cfg = CheckConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"check config: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    base = p.parent

    def anchor(pats: list[str]) -> list[str]:
        return [q if Path(q).is_absolute() else str(base / q) for q in pats]

    update: dict[str, Any] = {
        "artifacts": anchor(cfg.artifacts),
        "release": anchor(cfg.release),
    }
    if cfg.signing.verify_key is not None:
        update["signing"] = SigningSection(verify_key=anchor([cfg.signing.verify_key])[0])
    return cfg.model_copy(update=update)


@dataclass(frozen=True)
class Finding:
    """One checked fact: ``ok`` or a ``violation``, about one subject."""

    level: Literal["ok", "violation"]
    subject: str
    message: str

    def line(self) -> str:
        return f"{'FAIL' if self.level == 'violation' else 'ok  '} {self.subject}: {self.message}"


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "violation"]

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "violations": [f.line() for f in self.violations],
            "findings": [f.__dict__ for f in self.findings],
            "gaps": self.gaps,
        }


def _expand(patterns: list[str]) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(pat, recursive=True))
        if not hits and not any(ch in pat for ch in "*?["):
            hits = [pat]  # a plain missing path is reported, not silently skipped
        out.extend(Path(h) for h in hits)
    return list(dict.fromkeys(out))


def _read(path: Path, verify_key: Any = None) -> tuple[dict[str, Any], Any]:
    """(facts, guarantee or None) of a model file, read with privrec's hardened loader.

    The file is treated as hostile (size limits, dtype and shape checks: see
    :mod:`privrec.models.persistence`); its guarantee is *not* verified here, so that a
    mismatch is reported as a finding with both numbers instead of a load error. With
    ``verify_key`` its signature is (and a bad one raises ``SignatureError``).
    """
    from privrec.models import load_model

    model = load_model(path, verify=False, verify_key=verify_key)
    g = getattr(model, "guarantee_", None)
    facts = {
        # the parameters the loader checks the guarantee against (see _loader_verdict)
        "_params": model.config().model_dump(mode="json") if g is not None else {},
        "model": model.name,
        # any user data at all — a list of the training users' ids is one even with no
        # interactions beside it (as privacy verify and serve read it)
        "_stores_interactions": not bool(getattr(model, "_released_only", True)),
        "_signature": model.file_signature_,
    }
    return facts, g


def _loader_verdict(g: Any, params: dict[str, Any]) -> str | None:
    """Why :func:`~privrec.models.load_model` would refuse this guarantee beyond its ε, or ``None``.

    Re-deriving ε alone is not what the loader checks (:func:`_check_file` runs the loader's
    ε, event and tier check first): it also compares the guarantee with the model's own
    parameters (δ, unit, accountant, seed, ε within the asked budget). A guarantee relabelled —
    say seeded noise marked as unseeded, or an interaction-level model marked user-level —
    re-derives the same ε, so without this ``privrec check`` would pass a file every loader
    refuses, and judge the seeded-noise and unit policies on labels nobody verified.
    """
    from privrec.errors import GuaranteeMismatchError
    from privrec.privacy.verify import check_against_params

    try:
        check_against_params(g, params)
    except GuaranteeMismatchError as exc:
        return str(exc)
    return None


def _check_file(
    path: Path, release: bool, policy: PolicySection, rep: CheckReport, verify_key: Any = None
) -> Any:
    from privrec.errors import SignatureError

    add = rep.findings.append
    name = str(path)
    if not path.is_file():
        add(Finding("violation", name, "file not found"))
        return None
    try:
        meta, g = _read(path, verify_key)
    except SignatureError as exc:  # nothing else of the file is trusted, so nothing else is read
        add(Finding("violation", name, f"signature refused: {exc.message}"))
        return None
    except Exception as exc:  # any unreadable file is a finding, not a crash
        add(Finding("violation", name, f"unreadable model file ({type(exc).__name__}: {exc})"))
        return None
    if verify_key is not None:
        add(Finding("ok", name, f"signed by {meta['_signature'].fingerprint}, unchanged since"))
    kind = meta.get("model", "?")
    if g is None:
        if release and not policy.allow_non_private:
            add(
                Finding(
                    "violation", name, f"{kind} is not a private model but is marked for release"
                )
            )
        else:
            add(Finding("ok", name, f"{kind}: not private (not marked for release)"))
        return None
    from privrec.errors import GuaranteeMismatchError
    from privrec.privacy.verify import check_guarantee

    refused = ""
    try:  # the loader's rule: RDP files written at other orders are accepted as it accepts them
        eps, agrees = check_guarantee(g), True
    except GuaranteeMismatchError as exc:
        eps, agrees, refused = math.nan, False, str(exc)
    except Exception as exc:
        add(Finding("violation", name, f"its events cannot be re-accounted ({exc})"))
        return g
    if not agrees:
        try:
            eps = g.recompute_epsilon()
        except Exception as exc:  # malformed events: the loader's refusal says why
            add(Finding("violation", name, f"its events cannot be re-accounted ({exc})"))
            return g
        if math.isclose(eps, g.epsilon, rel_tol=_TOL, abs_tol=_TOL):  # refused for another field
            add(Finding("violation", name, refused))
            return g
    if not agrees:
        add(
            Finding(
                "violation",
                name,
                f"states ε = {g.epsilon:.6g} but its {len(g.events)} events give ε = {eps:.6g}",
            )
        )
    else:
        add(
            Finding(
                "ok",
                name,
                f"ε = {g.epsilon:.4g} re-derived from {len(g.events)} events ({g.accountant.value})",
            )
        )
    verdict = _loader_verdict(g, meta["_params"])
    if verdict is not None:
        add(Finding("violation", name, f"its guarantee fails verification as loaded: {verdict}"))
    if release and g.seeded_noise:
        add(
            Finding(
                "violation", name, "trained with seeded noise (not private) and marked for release"
            )
        )
    if release and meta["_stores_interactions"] and not policy.allow_user_data:
        add(
            Finding(
                "violation",
                name,
                "stores training users or interactions, which its guarantee does not cover",
            )
        )
    if policy.max_epsilon is not None and g.epsilon > policy.max_epsilon * (1 + _TOL):
        add(
            Finding(
                "violation",
                name,
                f"ε = {g.epsilon:.4g} exceeds the policy's max_epsilon {policy.max_epsilon:g}",
            )
        )
    if policy.max_delta is not None and g.delta > policy.max_delta * (1 + _TOL):
        add(
            Finding(
                "violation",
                name,
                f"δ = {g.delta:.2g} exceeds the policy's max_delta {policy.max_delta:g}",
            )
        )
    if policy.unit is not None and g.unit.value != policy.unit:
        add(
            Finding(
                "violation",
                name,
                f"privacy unit {g.unit.value} but the policy requires {policy.unit}",
            )
        )
    return g


def _claimed_signer(path: Path) -> str | None:
    """The fingerprint a file's signature block names (not checked here: the ledger recorded
    the hash of these bytes, signature block included, so a match pins the signer)."""
    from privrec.models.signing import read_signature

    try:
        sig = read_signature(path)
    except Exception:  # an unreadable file is reported by the file checks
        return None
    return None if sig is None else sig.fingerprint


def _signed(signer: str | None) -> str:
    return f"signed by {signer}" if signer else "unsigned"


def _check_ledger(cfg: CheckConfig, release: list[Path], rep: CheckReport) -> None:
    from privrec.governance import Ledger
    from privrec.governance.composition import ChargeEvents
    from privrec.governance.ledger import file_sha256
    from privrec.privacy.units import PrivacyUnit

    add = rep.findings.append
    led = cfg.ledger
    ledger = Ledger.connect(led.url, led.api_key)
    v = ledger.verify_audit_log(expect_head=led.expect_head)
    add(
        Finding(
            "ok" if v.ok else "violation",
            "audit log",
            f"{v.message} ({v.rows} rows, head {v.head_hash[:12]}…)",
        )
    )
    for info in ledger.datasets():
        status = [s for s in ledger.status(info.name)]
        for s in status:
            if s.composed_epsilon > s.epsilon * (1 + _TOL):
                add(
                    Finding(
                        "violation",
                        f"budget {info.name}/{s.label}",
                        f"spent ε {s.composed_epsilon:.4g} exceeds the cap {s.epsilon:g}",
                    )
                )
        base = next((s for s in status if s.scope == "dataset"), None)
        if base is None:
            continue
        bad = 0
        charges = ledger.history(info.name, limit=None)
        for c in charges:
            if c.status == "aborted":
                continue
            # a charge proven only in RDP (federated, distributed DP) is marked so in its
            # events and re-derived with RDP, as the ledger composed it — not with the budget's
            eps = ChargeEvents(c.events).epsilon(
                base.delta, base.accountant, PrivacyUnit(info.unit)
            )
            if not math.isclose(eps, c.epsilon, rel_tol=1e-4, abs_tol=1e-6):
                bad += 1
                add(
                    Finding(
                        "violation",
                        f"charge {c.id}",
                        f"records ε = {c.epsilon:.6g}, its events give {eps:.6g}",
                    )
                )
        if not bad:
            add(
                Finding(
                    "ok",
                    f"ledger {info.name}",
                    f"{len(charges)} charges re-derive; budgets within caps",
                )
            )
    artifacts = ledger.artifacts() if release else []
    recorded = {a.file_hash: a for a in artifacts}
    at_path = {a.path: a for a in artifacts}  # the latest artifact released at each path
    for path in release:
        if not path.is_file():
            continue
        digest = file_sha256(path)
        signer = _claimed_signer(path)
        art = recorded.get(digest)
        if art is None:
            before = at_path.get(str(path.resolve()))
            if before is not None and before.signer != signer:
                add(
                    Finding(
                        "violation",
                        str(path),
                        f"{_signed(signer)}, but the ledger recorded artifact {before.id} at this "
                        f"path as {_signed(before.signer)}: re-signed or replaced after release "
                        "(not a recorded artifact)",
                    )
                )
                continue
            add(
                Finding(
                    "violation",
                    str(path),
                    "marked for release but not a recorded artifact of the ledger",
                )
            )
            continue
        if art.signer != signer:  # same bytes, other signer: the ledger row was edited
            add(
                Finding(
                    "violation",
                    str(path),
                    f"{_signed(signer)}, but the ledger records artifact {art.id} as "
                    f"{_signed(art.signer)}",
                )
            )
            continue
        try:
            _, g = _read(path)
        except Exception:
            continue
        if g is not None and not math.isclose(
            float(art.guarantee.get("epsilon", math.nan)), g.epsilon, rel_tol=_TOL
        ):
            add(
                Finding(
                    "violation",
                    str(path),
                    "the ledger's recorded guarantee differs from the file's",
                )
            )
        elif art.seeded_noise:
            add(
                Finding(
                    "violation", str(path), "recorded in the ledger as trained with seeded noise"
                )
            )
        else:
            add(
                Finding(
                    "ok",
                    str(path),
                    f"recorded artifact {art.id} (charges {list(art.charge_ids)}"
                    + (f", signed by {art.signer}" if art.signer else "")
                    + ")",
                )
            )


def run_check(cfg: CheckConfig) -> CheckReport:
    """Run every check the configuration asks for."""
    rep = CheckReport()
    release = _expand(cfg.release)
    everything = list(dict.fromkeys([*_expand(cfg.artifacts), *release]))
    if not everything:
        if cfg.artifacts or cfg.release:  # a CI check must not pass on a pattern matching nothing
            raise ConfigError(
                "nothing to check: the artifact and release patterns match no file "
                f"({', '.join([*cfg.artifacts, *cfg.release])})"
            )
        if cfg.ledger.url is None:
            raise ConfigError("nothing to check: give artifacts, release files or a ledger (--db)")
    key = None
    if cfg.signing.verify_key is not None:
        from privrec.models.signing import load_verify_key

        key = load_verify_key(cfg.signing.verify_key)  # a bad key file is an error, not a finding
    rel = set(release)
    for path in everything:
        _check_file(path, path in rel, cfg.policy, rep, key)
    if cfg.ledger.url is not None:
        try:
            _check_ledger(cfg, release, rep)
        except ImportError as exc:  # pragma: no cover - governance is a core part of privrec
            rep.gaps.append(f"ledger checks skipped: {exc}")
    else:
        rep.gaps.append("no ledger given: audit-log chain and budget consistency not checked")
    if key is None and everything:
        rep.gaps.append(
            "no verify key given: who produced the files is not checked (a consistent forgery of "
            "noise parameters and ε passes the other checks)"
        )
    return rep
