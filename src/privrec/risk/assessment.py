"""A privacy risk assessment of a recommender pipeline, from its configuration.

The pipeline is described in TOML (what data it holds, how it trains, serves, logs,
answers analysts and monitors — see :data:`EXAMPLE`). The assessment inventories the
data types and touchpoints and walks every **leakage channel** a recommender has,
mapping each to the mitigation the configuration provides:

============================  =====================================================
channel                       mitigated when
============================  =====================================================
training data → model         a stated user-level unit, finite ε and stated δ within
                              the weak thresholds, CSPRNG noise (clipped if federated)
model file contents           private models saved without training interactions
recommendations → others      lists are post-processing of a DP model (joint DP)
recommendations → the user    shown only to that user (joint DP's stated exception)
cumulative loss (retraining)  every releasing component (model, DP analytics, DP
                              monitoring) charged to a composed budget (ledger)
analytics queries             none, or DP queries charged to the ledger
logs                          no raw user ids (or pseudonymised) and bounded retention
monitoring / drift stats      DP histograms (``privrec monitor``) or none; a tracked
                              model's quality only if that model is DP or trained on
                              users disjoint from the monitored ones
federated updates             clipped, DP-noised and securely aggregated
what the training server sees central DP trusts it (an assumption, reported as such);
                              federated/cross-silo remove the trust
what each aggregation server  cross-silo: random shares only, under non-collusion
sees
what the scoring server sees  on-device, HE or MPC scoring; else the history is seen
raw data retention            a finite retention period is stated
============================  =====================================================

Each channel gets a status — ``mitigated``, ``partial`` (mitigated under a stated
assumption or weakly), ``unmitigated`` or ``n/a`` — with the reason and what to change.

One rule ties the channels to the model: every channel the model's guarantee covers (the
model, its file, the lists it serves, the cumulative budget, the federated updates and sums,
and the monitored quality of a model trained on the monitored users) is at best as protected as that guarantee, decided once by :func:`model_guarantee`. A weak ε
or δ, an interaction-level or unstated unit, or a missing δ make them at best ``partial``; no
ε, seeded noise or unclipped federated updates (the stated ε does not hold) make them
``unmitigated`` — each with the reason, so a report never calls a list better protected
than the model it is computed from.

The description is validated first (:mod:`privrec.risk.pipeline`): inconsistent input — a
central model in a federated setting, settings of a section that does not apply, queries
charged to a disabled ledger, booleans for numbers — is refused, not assessed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from privrec.privacy.budget import WEAK_DELTA, WEAK_EPSILON
from privrec.risk.pipeline import (
    EXAMPLE,
    MODELS,
    CrossSiloSection,
    FederatedSection,
    PipelineConfig,
    load_pipeline,
)

__all__ = ["EXAMPLE", "Channel", "PipelineConfig", "RiskReport", "assess", "load_pipeline"]

Status = Literal["mitigated", "partial", "unmitigated", "n/a"]

# every line break str.splitlines knows (\r, \n, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029)
_BREAKS = str.maketrans(dict.fromkeys("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029", " "))


def _md(text: str) -> str:
    """``text`` safe inside one Markdown table cell or heading line.

    Names come from the pipeline description: a ``|`` would split a cell (shifting every
    status after it into the wrong column) and a line break would end the row or heading and
    start new Markdown (a forged row or heading). Pipes are escaped, line breaks become
    spaces, ``<`` is escaped so that no HTML is injected into a rendered report, and ``[``/``]``
    so that a name cannot become a link or image (``[x](https://…)``).
    """
    flat = text.translate(_BREAKS).replace("\\", "\\\\").replace("|", "\\|")
    return flat.replace("<", "&lt;").replace("[", "\\[").replace("]", "\\]")


def _md_name(text: str) -> str:
    """A free-text name from the pipeline description (its name, its data types) as Markdown
    text: :func:`_md`, and ``*``, ``_``, ``~`` and backticks escaped so that it cannot become
    emphasis, strike-through or code either (the report's own texts keep their code spans)."""
    return re.sub(r"([*_~`])", r"\\\1", _md(text))


@dataclass(frozen=True)
class Channel:
    """One leakage channel, where it happens, and how the configuration handles it."""

    name: str
    touchpoint: str
    data: str
    status: Status
    mitigation: str
    advice: str = ""


@dataclass
class RiskReport:
    """The assessment: inventory, touchpoints and channels."""

    pipeline: str
    data_types: list[str]
    touchpoints: list[str]
    channels: list[Channel] = field(default_factory=list)

    @property
    def unmitigated(self) -> list[Channel]:
        return [c for c in self.channels if c.status == "unmitigated"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "data_types": self.data_types,
            "touchpoints": self.touchpoints,
            "channels": [asdict(c) for c in self.channels],
            "unmitigated": [c.name for c in self.unmitigated],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        mark = {
            "mitigated": "✅ mitigated",
            "partial": "⚠️ partial",
            "unmitigated": "❌ UNMITIGATED",
            "n/a": "— n/a",
        }
        lines = [
            f"# Privacy risk assessment: {_md_name(self.pipeline)}",
            "",
            f"**Data held:** {', '.join(_md_name(t) for t in self.data_types)}.",
            "",
            f"**Touchpoints:** {', '.join(_md_name(t) for t in self.touchpoints)}.",
            "",
            "| channel | touchpoint | data at risk | status | mitigation in this configuration | to do |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.channels:
            names = (_md_name(c.name), _md_name(c.touchpoint), _md_name(c.data))  # data: types
            texts = (_md(x) for x in (mark[c.status], c.mitigation, c.advice))
            lines.append("| " + " | ".join((*names, *texts)) + " |")
        n = len(self.unmitigated)
        lines += [
            "",
            f"{n} unmitigated channel{'s' if n != 1 else ''}." if n else "No unmitigated channel.",
        ]
        return "\n".join(lines) + "\n"


_RANK: dict[Status, int] = {"unmitigated": 0, "partial": 1, "mitigated": 2}


@dataclass(frozen=True)
class Guarantee:
    """What the model's DP guarantee actually covers: the one ceiling for every model channel.

    Every channel downstream of the model (the model itself, its file, the lists it serves,
    the federated updates that build it, the budget its releases are charged to) is protected
    by this guarantee and nothing stronger, so each of those channels takes the weaker of its
    own status and :attr:`status` — computed here once, so that no channel can be reported
    better protected than the model it depends on.

    ``status`` is ``mitigated`` only for a finite ε with a stated δ, both within the weak
    thresholds of :mod:`privrec.privacy.budget`, at a *stated* user-level unit, with
    unpredictable noise (and clipped updates when federated). Anything the stated ε does not
    hold under (no DP, seeded noise, unclipped updates) is ``unmitigated``; anything that
    holds but weakly or for less than a user's whole history is ``partial``. ``problems``
    says why, one clause per shortcoming.
    """

    status: Status
    claim: str
    problems: tuple[str, ...]
    advice: tuple[str, ...]
    dp: bool  # a DP mechanism is claimed at all (a private model with a finite ε)

    @property
    def reason(self) -> str:
        """The guarantee and, if it falls short, every reason why."""
        if not self.problems:
            return f"{self.claim}; check with `privrec audit run`"
        why = "; ".join(self.problems)
        return f"{self.claim}, but {why}" if self.claim else why

    def bound(self, status: Status, mitigation: str, advice: str = "") -> tuple[Status, str, str]:
        """``(status, mitigation, advice)`` of a channel the model's guarantee covers, capped.

        A channel whose own mitigation is sound is still only as protected as the guarantee
        behind it; when the cap applies the reason names the guarantee's shortcomings.
        """
        if _RANK[self.status] >= _RANK[status]:
            return status, mitigation, advice
        why = f"{mitigation} — only as strong as the model's guarantee: " + "; ".join(self.problems)
        todo = "; ".join(dict.fromkeys(a for a in (advice, *self.advice) if a))
        return self.status, why, todo


def model_guarantee(cfg: PipelineConfig) -> Guarantee:
    """The status the training configuration's DP guarantee supports, and why (see :class:`Guarantee`)."""
    t = cfg.training
    fed = (cfg.federated or FederatedSection()) if t.setting == "federated" else None
    if not MODELS[t.model].private:
        stated = (
            "" if t.epsilon is None else f" (the stated ε = {t.epsilon:g} does not apply to it)"
        )
        return Guarantee(
            "unmitigated",
            "",
            (f"{t.model} is not differentially private{stated}",),
            ("train a private model (DPALS, DPEASE, DPPopularity) with ε ≤ your policy",),
            dp=False,
        )
    dp = t.epsilon is not None and math.isfinite(t.epsilon)
    eps = "—" if t.epsilon is None else f"{t.epsilon:g}"
    # what makes the stated ε not hold at all: the channels it covers are unmitigated
    fatal: list[tuple[str, str]] = []
    if not dp:
        fatal.append(
            (
                f"no ε is stated, so {t.model} is not differentially private",
                "state the ε the model is trained with (training.epsilon)",
            )
        )
    if t.seeded_noise:
        fatal.append(
            ("seeded (predictable) noise: the stated ε does not hold", "train without a seed")
        )
    if fed is not None and not fed.clipping:
        fatal.append(
            (
                "updates are not clipped: no one's contribution is bounded, so no ε holds",
                "clip every device's update (federated.clipping = true)",
            )
        )
    # what makes it hold weakly, or for less than a user's whole history: at best partial
    weak: list[tuple[str, str]] = []
    if t.unit is None:
        weak.append(
            (
                "the privacy unit is not stated, so user-level DP (a whole history) cannot be "
                "assumed",
                "state the unit the model was trained at (training.unit = user)",
            )
        )
    elif t.unit == "interaction":
        weak.append(
            (
                "interaction-level DP protects single interactions, not a user's whole "
                f"history: a user with n interactions gets about n·ε = n·{eps}",
                "use unit = user",
            )
        )
    if t.epsilon is not None and t.epsilon > WEAK_EPSILON:
        weak.append((f"ε = {eps} is above {WEAK_EPSILON:g}: a weak guarantee", "lower ε"))
    if t.delta is None:  # a Gaussian mechanism is never (ε, 0)-DP: the claim is incomplete
        weak.append(("no δ is stated", "state the δ the model was trained with (training.delta)"))
    elif t.delta >= WEAK_DELTA:
        weak.append(
            (
                f"δ = {t.delta:g} is at or above {WEAK_DELTA:g}: a weak guarantee",
                "use δ well below 1/(number of users)",
            )
        )
    level = {"user": "user-level ", "interaction": "interaction-level ", None: ""}[t.unit]
    claim = f"{level}({eps if t.delta is None else f'{eps}, {t.delta:g}'})-DP {t.model}"
    found = fatal or weak  # once the ε does not hold, its weaknesses are moot
    status: Status = "unmitigated" if fatal else ("partial" if weak else "mitigated")
    return Guarantee(
        status,
        claim if dp else "",
        tuple(p for p, _ in found),
        tuple(a for _, a in found),
        dp=dp,
    )


def assess(cfg: PipelineConfig) -> RiskReport:
    """Map every leakage channel of the pipeline to its mitigation (see the module docstring).

    The channels the model's guarantee covers are capped by :func:`model_guarantee` through
    :meth:`Guarantee.bound`, the one place their status is decided against it, so the report
    cannot call a channel better protected than the guarantee behind it.
    """
    t = cfg.training
    g = model_guarantee(cfg)
    fed = t.setting == "federated"
    silo = t.setting == "cross-silo"
    touch = ["data store", "training server" if t.setting == "central" else "aggregation"]
    if fed:
        touch = ["devices", "federated server"]
    if silo:
        touch = ["silos", "aggregation servers", "driver"]
    touch += ["model artifact", f"scoring ({cfg.serving.scoring})", "logs"]
    if cfg.analytics.queries != "none":
        touch.append("analytics queries")
    if cfg.monitoring.kind != "none":
        touch.append("monitoring")
    if cfg.ledger.enabled:
        touch.append("budget ledger")
    rep = RiskReport(cfg.pipeline.name, list(cfg.data.types), touch)
    ch = rep.channels.append

    # 1. training data -> model: the guarantee itself
    exposed = (
        "heavy users' histories" if t.unit == "interaction" else "every training user's history"
    )
    ch(
        Channel(
            "training data → model",
            "model artifact",
            exposed,
            g.status,
            g.reason,
            "; ".join(g.advice),
        )
    )
    # 2. model file contents
    if g.dp and t.include_user_data:
        ch(
            Channel(
                "model file contents",
                "model artifact",
                "training interactions",
                "unmitigated",
                "the file stores training interactions, which the guarantee does not cover",
                "save without include_user_data",
            )
        )
    elif g.dp:
        ch(
            Channel(
                "model file contents",
                "model artifact",
                "training interactions",
                *g.bound("mitigated", "the file holds only the released (DP) parameters"),
            )
        )
    else:
        ch(
            Channel(
                "model file contents",
                "model artifact",
                "training interactions",
                "unmitigated",
                f"a non-private model's file stores what it memorised (and by default the "
                f"interactions): {g.problems[0]}",
                "use a private model",
            )
        )
    # 3. recommendations -> other users: post-processing, so never better than the model
    if g.dp:
        others = g.bound(
            "mitigated",
            "lists are post-processing of the DP model and the requester's own history "
            "(joint DP); `privrec audit mia` measures it",
        )
    else:
        others = (
            "unmitigated",
            f"a memorising model's lists reveal members (MIA AUC well above 0.5): {g.problems[0]}",
            "train a private model",
        )
    ch(
        Channel(
            "recommendations → other users",
            "scoring",
            "members' histories (membership inference from lists)",
            *others,
        )
    )
    # 4. recommendations -> the user (joint DP exception): access control, not the guarantee
    shown = cfg.serving.lists_shown_to_others
    ch(
        Channel(
            "recommendations → the user",
            "scoring",
            "the user's own history",
            "partial" if shown else "mitigated",
            "lists are shown to others too: joint DP does not cover someone seeing your own list"
            if shown
            else "each list is shown only to its user (the joint-DP threat model)",
            "do not expose one user's list to others" if shown else "",
        )
    )
    # 5. cumulative loss: a composed budget is only as strong as what is charged to it
    ch(
        Channel(
            "cumulative loss across releases",
            "budget ledger",
            "everyone, across retrainings and queries",
            *_cumulative(cfg, g),
        )
    )
    _side_channels(cfg, g, ch)
    # 9. federated updates / servers
    if fed:
        _federated(cfg.federated or FederatedSection(), g, ch)
    else:
        ch(Channel("federated updates", "devices", "—", "n/a", "not federated"))
    if silo:
        s = cfg.cross_silo or CrossSiloSection()
        shares = s.non_collusion and s.servers >= 2
        ch(
            Channel(
                "what each aggregation server sees",
                "aggregation servers",
                "silos' statistics",
                "partial" if shares else "unmitigated",
                "uniformly random shares only — under the assumption that the servers do not collude"
                if shares
                else "a single or colluding server sees the silos' statistics",
                "keep the two servers under separate control"
                if s.non_collusion
                else "use two non-colluding servers",
            )
        )
    if t.setting == "central":
        ch(
            Channel(
                "what the training server sees",
                "training server",
                "all raw interactions",
                "partial",
                "central DP trusts the training server with raw data (stated assumption)",
                "restrict access; or use federated / cross-silo training",
            )
        )
    # 10. scoring server
    sc = cfg.serving.scoring
    ch(
        Channel(
            "what the scoring server sees",
            f"scoring ({sc})",
            "the requesting user's history",
            "mitigated" if sc in ("on-device", "he", "mpc") else "partial",
            {
                "server": "the server sees each user's history to score it",
                "on-device": "scored on the device from the released model",
                "he": "CKKS-encrypted scoring",
                "mpc": "three-party secure top-k",
            }[sc],
            "score on device or with `privrec he` / `privrec mpc`" if sc == "server" else "",
        )
    )
    # 11. retention: always listed — a stated limit is the mitigation, none (or inf) the risk
    days = cfg.data.retention_days
    limited = days is not None and math.isfinite(days)
    ch(
        Channel(
            "raw data retention",
            "data store",
            ", ".join(cfg.data.types),
            "mitigated" if limited else "partial",
            f"raw data is kept at most {days:g} days (stated retention limit)"
            if limited
            else (
                "no retention limit stated"
                if days is None
                else "no retention limit (retention_days = inf): raw data is kept indefinitely"
            ),
            "" if limited else "state a finite retention period in the data policy",
        )
    )
    return rep


def _federated(f: FederatedSection, g: Guarantee, ch: Callable[[Channel], None]) -> None:
    """The federated channels: secure aggregation hides single updates, the guarantee bounds
    what the sums reveal, so both channels are capped by it."""
    if f.secure_aggregation:
        updates = g.bound(
            "mitigated",
            "secure aggregation: the server sees only sums of updates, not one device's",
        )
    else:
        updates = (
            "unmitigated",
            "no secure aggregation: the server sees each device's update",
            "enable secure aggregation",
        )
    ch(Channel("federated updates", "federated server", "each device's model update", *updates))
    if f.aggregation == "distributed" and not f.secure_aggregation:
        sees: tuple[Status, str, str] = (
            "unmitigated",
            "distributed DP without secure aggregation: the server sees each device's update "
            "with only that device's share of the noise",
            "enable secure aggregation",
        )
    elif f.aggregation == "distributed" and not g.dp:
        sees = (
            "unmitigated",
            "no DP noise is added: the server sees exact sums of updates; " + "; ".join(g.problems),
            "; ".join(g.advice),
        )
    elif f.aggregation == "distributed":
        sees = g.bound(
            "mitigated",
            "distributed DP: noise added on devices, the server never sees a noiseless sum",
        )
    else:
        sees = g.bound(
            "partial",
            "central DP: the server adds the noise (trusted for that)",
            "use aggregation = distributed",
        )
    ch(Channel("what the federated server sees", "federated server", "sums of updates", *sees))


def _uncharged(cfg: PipelineConfig, g: Guarantee) -> list[str]:
    """Every releasing component whose privacy loss the ledger's composed budget does not
    count (the model's releases are charged whenever the ledger is enabled)."""
    a, m = cfg.analytics, cfg.monitoring
    out: list[str] = []
    if a.queries == "dp" and not a.ledger:
        out.append("DP analytics queries (analytics.ledger = false)")
    elif a.queries == "raw":
        out.append("raw analytics queries (exact answers: no ε to charge)")
    if m.kind == "dp" and not m.ledger:
        out.append("DP monitoring windows (monitoring.ledger = false)")
    elif m.kind == "raw":
        out.append("raw monitoring counts (exact: no ε to charge)")
    if m.kind == "dp" and _quality_invalid(cfg, g):
        out.append(
            "the monitored quality of a model without a DP guarantee trained on the monitored "
            "users (the windows' ε does not cover it)"
        )
    return out


def _cumulative(cfg: PipelineConfig, g: Guarantee) -> tuple[Status, str, str]:
    """The cumulative-loss channel: ``mitigated`` only when *every* releasing component is
    charged to the composed budget — a budget that leaves out the queries or the monitoring
    understates what was spent, so it cannot be called a bound on the cumulative loss."""
    if not cfg.ledger.enabled:
        return (
            "unmitigated",
            "no ledger: retrainings, queries and monitoring windows compose unchecked",
            "enable the ledger (`privrec ledger init`)",
        )
    missing = _uncharged(cfg, g)
    if missing:
        return g.bound(
            "partial",
            "model releases are charged to a composed budget, but not: " + "; ".join(missing),
            "charge every release to the ledger (DP queries and monitoring windows included)",
        )
    releasing = ["model releases"]
    if cfg.analytics.queries == "dp":
        releasing.append("DP analytics queries")
    if cfg.monitoring.kind == "dp":
        releasing.append("DP monitoring windows")
    return g.bound(
        "mitigated",
        "every release is charged to a composed budget (" + ", ".join(releasing) + ")",
    )


def _quality_invalid(cfg: PipelineConfig, g: Guarantee) -> bool:
    """The monitor releases the quality of a model that depends on the monitored users and
    has no DP guarantee: the release's per-user sensitivity (√2 for a fixed model) is void."""
    m = cfg.monitoring
    return m.quality and m.quality_training_users == "overlapping" and not g.dp


def _monitoring(cfg: PipelineConfig, g: Guarantee) -> tuple[Status, str, str]:
    """The monitoring channel.

    The window histograms are DP on their own. A tracked model's quality is a DP release only
    when the model is *fixed* with respect to the monitored users: trained on disjoint users,
    or itself DP — then the quality release is DP by adaptive composition with the model's
    guarantee, and so no better protected than that guarantee (capped by it). A non-private
    model trained on the monitored users changes with each of them, and with it everyone's
    recall, so the release has no valid sensitivity and its stated ε does not hold.
    """
    m = cfg.monitoring
    model = cfg.training.model
    if m.kind == "none":
        return "n/a", "no monitoring", ""
    if m.kind == "raw":
        what = "exact per-window counts" + (
            f" and the exact quality of {model}" if m.quality else ""
        )
        return "unmitigated", what, "use `privrec monitor` (DP histograms)"
    hist = "DP window histograms (`privrec monitor`)"
    if not m.quality:
        return "mitigated", hist, ""
    if m.quality_training_users == "disjoint":
        return (
            "mitigated",
            f"{hist} and the DP quality of {model}, trained on users disjoint from the "
            "monitored ones (the model is fixed for them, so the quality's sensitivity holds)",
            "",
        )
    if g.dp:
        return g.bound(
            "mitigated",
            f"{hist} and the quality of the DP {model}, which is trained on the monitored users: "
            "DP by adaptive composition with the model's guarantee (the model's ε adds to the "
            "windows')",
        )
    return (
        "unmitigated",
        f"{hist}, but the quality of {model} is released and it is trained on the monitored "
        f"users without a DP guarantee ({g.problems[0]}): the model changes with each user, "
        "so the quality release has no valid sensitivity and the windows' ε does not cover it",
        "track a DP model, or one trained on users disjoint from the monitored ones "
        '(monitoring.quality_training_users = "disjoint"), or set monitoring.quality = false',
    )


def _side_channels(cfg: PipelineConfig, g: Guarantee, ch: Callable[[Channel], None]) -> None:
    """Analytics, logs and monitoring: their own mechanisms (the monitored quality of the
    model is the exception: it is bounded by the model's guarantee, see :func:`_monitoring`)."""
    # 6. analytics
    q = cfg.analytics.queries
    charged = cfg.analytics.ledger
    ch(
        Channel(
            "analytics queries",
            "analytics queries",
            "aggregates over users",
            "n/a"
            if q == "none"
            else (
                "mitigated"
                if q == "dp" and charged
                else ("partial" if q == "dp" else "unmitigated")
            ),
            {
                "none": "no analytics queries",
                "dp": "DP queries"
                + (" charged to the ledger" if charged else " (not charged to a ledger)"),
                "raw": "exact aggregates can single out users (differencing attacks)",
            }[q],
            {
                "none": "",
                "dp": "" if charged else "charge queries to the ledger (analytics.ledger = true)",
                "raw": "answer queries with DP and charge them",
            }[q],
        )
    )
    # 7. logs: a limit is a finite number of days (inf is no limit, NaN/negative are refused)
    lg = cfg.logs
    days = lg.retention_days
    bounded = days is not None and math.isfinite(days)
    log_status: Status = (
        "mitigated"
        if lg.user_ids == "none"
        else ("partial" if lg.user_ids == "pseudonymised" and bounded else "unmitigated")
    )
    if bounded:
        kept = f"{days:g} days"
    else:
        kept = "no limit stated" if days is None else "no limit (retention_days = inf)"
    ch(
        Channel(
            "logs",
            "logs",
            "request histories, user ids",
            log_status,
            f"user ids: {lg.user_ids}; retention: {kept}",
            ""
            if log_status == "mitigated"
            else "log no raw ids (keyed hashes) and bound retention",
        )
    )
    # 8. monitoring
    ch(
        Channel(
            "monitoring / drift statistics",
            "monitoring",
            "per-window counts"
            + (", the tracked model's quality" if cfg.monitoring.quality else ""),
            *_monitoring(cfg, g),
        )
    )
