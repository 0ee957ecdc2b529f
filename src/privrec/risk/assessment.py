"""A privacy risk assessment of a recommender pipeline, from its configuration.

The pipeline is described in TOML (what data it holds, how it trains, serves, logs,
answers analysts and monitors — see :data:`EXAMPLE`). The assessment inventories the
data types and touchpoints and walks every **leakage channel** a recommender has,
mapping each to the mitigation the configuration provides:

============================  =====================================================
channel                       mitigated when
============================  =====================================================
training data → model         a user-level DP model, finite ε, CSPRNG noise
model file contents           private models saved without training interactions
recommendations → others      lists are post-processing of a DP model (joint DP)
recommendations → the user    shown only to that user (joint DP's stated exception)
cumulative loss (retraining)  every release charged to a composed budget (ledger)
analytics queries             none, or DP queries charged to the ledger
logs                          no raw user ids (or pseudonymised) and bounded retention
monitoring / drift stats      DP histograms (``privrec monitor``) or none
federated updates             clipped, DP-noised and securely aggregated
what the training server sees central DP trusts it (an assumption, reported as such);
                              federated/cross-silo remove the trust
what each aggregation server  cross-silo: random shares only, under non-collusion
sees
what the scoring server sees  on-device, HE or MPC scoring; else the history is seen
============================  =====================================================

Each channel gets a status — ``mitigated``, ``partial`` (mitigated under a stated
assumption or weakly), ``unmitigated`` or ``n/a`` — with the reason and what to change.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic

from privrec.errors import ConfigError
from privrec.privacy.budget import WEAK_DELTA, WEAK_EPSILON

__all__ = ["EXAMPLE", "Channel", "PipelineConfig", "RiskReport", "assess", "load_pipeline"]

Status = Literal["mitigated", "partial", "unmitigated", "n/a"]

EXAMPLE = """
[pipeline]
name = "movie recommendations"

[data]
types = ["ratings", "timestamps", "user ids"]
retention_days = 365

[training]
model = "dpals"
epsilon = 1.0
delta = 1e-6
unit = "user"
setting = "central"          # central | federated | cross-silo
seeded_noise = false
include_user_data = false

[serving]
scoring = "server"           # server | on-device | he | mpc
lists_shown_to_others = false

[analytics]
queries = "dp"               # none | dp | raw
ledger = true

[logs]
user_ids = "pseudonymised"   # none | pseudonymised | raw
retention_days = 30

[monitoring]
kind = "dp"                  # none | dp | raw

[ledger]
enabled = true
"""


class _S(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class PipelineSection(_S):
    name: str = "recommender pipeline"


class DataSection(_S):
    types: list[str] = pydantic.Field(default_factory=lambda: ["interactions", "user ids"])
    retention_days: float | None = None


class TrainingSection(_S):
    model: str
    epsilon: float | None = pydantic.Field(default=None, gt=0, allow_inf_nan=False)
    delta: float | None = pydantic.Field(default=None, gt=0, lt=1)
    unit: Literal["user", "interaction"] | None = None
    setting: Literal["central", "federated", "cross-silo"] = "central"
    seeded_noise: bool = False
    include_user_data: bool = False


class FederatedSection(_S):
    secure_aggregation: bool = True
    aggregation: Literal["central", "distributed"] = "distributed"
    clipping: bool = True


class CrossSiloSection(_S):
    servers: int = 2
    non_collusion: bool = True


class ServingSection(_S):
    scoring: Literal["server", "on-device", "he", "mpc"] = "server"
    lists_shown_to_others: bool = False


class AnalyticsSection(_S):
    queries: Literal["none", "dp", "raw"] = "none"
    ledger: bool = False


class LogsSection(_S):
    user_ids: Literal["none", "pseudonymised", "raw"] = "raw"
    retention_days: float | None = None


class MonitoringSection(_S):
    kind: Literal["none", "dp", "raw"] = "none"


class LedgerSection(_S):
    enabled: bool = False


class PipelineConfig(_S):
    pipeline: PipelineSection = pydantic.Field(default_factory=PipelineSection)
    data: DataSection = pydantic.Field(default_factory=DataSection)
    training: TrainingSection
    federated: FederatedSection | None = None
    cross_silo: CrossSiloSection | None = None
    serving: ServingSection = pydantic.Field(default_factory=ServingSection)
    analytics: AnalyticsSection = pydantic.Field(default_factory=AnalyticsSection)
    logs: LogsSection = pydantic.Field(default_factory=LogsSection)
    monitoring: MonitoringSection = pydantic.Field(default_factory=MonitoringSection)
    ledger: LedgerSection = pydantic.Field(default_factory=LedgerSection)


PRIVATE_MODELS = {"dpals", "dpease", "dppopularity", "federated_mf", "silo_dpals", "silo_dpease"}


def load_pipeline(source: str | Path | dict[str, Any]) -> PipelineConfig:
    """Parse a pipeline description (TOML file, TOML text or dict); one-line errors."""
    if isinstance(source, dict):
        raw = source
    else:
        text = str(source)
        if isinstance(source, Path) or "\n" not in text:
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"pipeline file {str(path)!r} not found")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"pipeline file {str(path)!r} is not UTF-8 text") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"pipeline is not valid TOML: {exc}") from None
    try:
        return PipelineConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "pipeline"
        raise ConfigError(f"pipeline: {where}: {err['msg']}") from None


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
            f"# Privacy risk assessment: {self.pipeline}",
            "",
            f"**Data held:** {', '.join(self.data_types)}.",
            "",
            f"**Touchpoints:** {', '.join(self.touchpoints)}.",
            "",
            "| channel | touchpoint | data at risk | status | mitigation in this configuration | to do |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.channels:
            lines.append(
                f"| {c.name} | {c.touchpoint} | {c.data} | {mark[c.status]} | {c.mitigation} | {c.advice} |"
            )
        n = len(self.unmitigated)
        lines += [
            "",
            f"{n} unmitigated channel{'s' if n != 1 else ''}." if n else "No unmitigated channel.",
        ]
        return "\n".join(lines) + "\n"


def assess(cfg: PipelineConfig) -> RiskReport:
    """Map every leakage channel of the pipeline to its mitigation (see the module docstring)."""
    t = cfg.training
    private = t.model in PRIVATE_MODELS and t.epsilon is not None and math.isfinite(t.epsilon)
    user_level = (t.unit or "user") == "user"
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
    eps = "—" if t.epsilon is None else f"{t.epsilon:g}"

    # 1. training data -> model: (data exposed, status, what holds, advice)
    every = "every training user's history"
    first: tuple[str, Status, str, str]
    if not private:
        first = (every, "unmitigated", f"{t.model} is not differentially private",
                 "train a private model (DPALS, DPEASE, DPPopularity) with ε ≤ your policy")  # fmt: skip
    elif t.seeded_noise:
        first = (every, "unmitigated", "seeded (predictable) noise: the stated ε does not hold",
                 "train without a seed (CSPRNG noise)")  # fmt: skip
    elif not user_level:
        first = ("heavy users' histories", "partial",
                 f"interaction-level DP (ε = {eps}): a user with n interactions gets about n·ε",
                 "use unit = user")  # fmt: skip
    elif t.delta is None:  # a Gaussian mechanism is never (ε, 0)-DP: the claim is incomplete
        first = (every, "partial", f"user-level ε = {eps} {t.model}, but no δ is stated",
                 "state the δ the model was trained with (training.delta)")  # fmt: skip
    elif (t.epsilon or 0) > WEAK_EPSILON or t.delta >= WEAK_DELTA:
        first = (every, "partial",
                 f"user-level ({eps}, {t.delta:g})-DP {t.model} is a weak guarantee "
                 f"(ε above {WEAK_EPSILON:g} or δ at or above {WEAK_DELTA:g})",
                 "lower ε, and δ well below 1/(number of users)")  # fmt: skip
    else:
        first = (every, "mitigated",
                 f"user-level ({eps}, {t.delta:g})-DP {t.model}; check with `privrec audit run`",
                 "")  # fmt: skip
    ch(Channel("training data → model", "model artifact", *first))
    # 2. model file contents
    if private and t.include_user_data:
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
    elif private:
        ch(
            Channel(
                "model file contents",
                "model artifact",
                "training interactions",
                "mitigated",
                "the file holds only the released (DP) parameters",
            )
        )
    else:
        ch(
            Channel(
                "model file contents",
                "model artifact",
                "training interactions",
                "unmitigated",
                "a non-private model's file stores what it memorised (and by default the interactions)",
                "use a private model",
            )
        )
    # 3. recommendations -> other users
    ch(
        Channel(
            "recommendations → other users",
            "scoring",
            "members' histories (membership inference from lists)",
            "mitigated" if private and not t.seeded_noise else "unmitigated",
            "lists are post-processing of the DP model and the requester's own history (joint DP); "
            "`privrec audit mia` measures it"
            if private
            else "a memorising model's lists reveal members (MIA AUC well above 0.5)",
            "" if private else "train a private model",
        )
    )
    # 4. recommendations -> the user (joint DP exception)
    ch(
        Channel(
            "recommendations → the user",
            "scoring",
            "the user's own history",
            "partial" if cfg.serving.lists_shown_to_others else "mitigated",
            "lists are shown to others too: joint DP does not cover someone seeing your own list"
            if cfg.serving.lists_shown_to_others
            else "each list is shown only to its user (the joint-DP threat model)",
            "do not expose one user's list to others" if cfg.serving.lists_shown_to_others else "",
        )
    )
    # 5. cumulative loss
    ch(
        Channel(
            "cumulative loss across releases",
            "budget ledger",
            "everyone, across retrainings and queries",
            "mitigated" if cfg.ledger.enabled else "unmitigated",
            "every release is charged to a composed budget"
            if cfg.ledger.enabled
            else "no ledger: retrainings and queries compose unchecked",
            "" if cfg.ledger.enabled else "enable the ledger (`privrec ledger init`)",
        )
    )
    # 6. analytics
    q = cfg.analytics.queries
    ch(
        Channel(
            "analytics queries",
            "analytics queries",
            "aggregates over users",
            "n/a"
            if q == "none"
            else (
                "mitigated"
                if q == "dp" and cfg.analytics.ledger
                else ("partial" if q == "dp" else "unmitigated")
            ),
            {
                "none": "no analytics queries",
                "dp": "DP queries"
                + (
                    " charged to the ledger"
                    if cfg.analytics.ledger
                    else " (not charged to a ledger)"
                ),
                "raw": "exact aggregates can single out users (differencing attacks)",
            }[q],
            {
                "none": "",
                "dp": "" if cfg.analytics.ledger else "charge queries to the ledger",
                "raw": "answer queries with DP and charge them",
            }[q],
        )
    )
    # 7. logs
    lg = cfg.logs
    log_status: Status = (
        "mitigated"
        if lg.user_ids == "none"
        else (
            "partial"
            if lg.user_ids == "pseudonymised" and lg.retention_days is not None
            else "unmitigated"
        )
    )
    ch(
        Channel(
            "logs",
            "logs",
            "request histories, user ids",
            log_status,
            f"user ids: {lg.user_ids}; retention: {'unbounded' if lg.retention_days is None else f'{lg.retention_days:g} days'}",
            ""
            if log_status == "mitigated"
            else "log no raw ids (keyed hashes) and bound retention",
        )
    )
    # 8. monitoring
    mk = cfg.monitoring.kind
    ch(
        Channel(
            "monitoring / drift statistics",
            "monitoring",
            "per-window counts",
            "n/a" if mk == "none" else ("mitigated" if mk == "dp" else "unmitigated"),
            {
                "none": "no monitoring",
                "dp": "DP window histograms (`privrec monitor`)",
                "raw": "exact per-window counts",
            }[mk],
            "use `privrec monitor` (DP histograms)" if mk == "raw" else "",
        )
    )
    # 9. federated updates / servers
    if fed:
        f = cfg.federated or FederatedSection()
        ok = f.clipping and f.secure_aggregation and private
        ch(
            Channel(
                "federated updates",
                "federated server",
                "each device's model update",
                "mitigated" if ok else "unmitigated",
                (
                    "clipped updates, DP noise, SecAgg+: the server sees only noisy sums"
                    if ok
                    else "the server sees individual updates (no secure aggregation, no clipping or no DP)"
                ),
                "" if ok else "enable clipping, DP and secure aggregation",
            )
        )
        ch(
            Channel(
                "what the federated server sees",
                "federated server",
                "sums of updates",
                "mitigated"
                if f.aggregation == "distributed" and f.secure_aggregation
                else "partial",
                "distributed DP: noise added on devices, the server never sees a noiseless sum"
                if f.aggregation == "distributed"
                else "central DP: the server adds the noise (trusted for that)",
                "" if f.aggregation == "distributed" else "use aggregation = distributed",
            )
        )
    else:
        ch(Channel("federated updates", "devices", "—", "n/a", "not federated"))
    if silo:
        s = cfg.cross_silo or CrossSiloSection()
        ch(
            Channel(
                "what each aggregation server sees",
                "aggregation servers",
                "silos' statistics",
                "partial" if s.non_collusion and s.servers >= 2 else "unmitigated",
                "uniformly random shares only — under the assumption that the servers do not collude"
                if s.non_collusion and s.servers >= 2
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
    # 11. retention
    if cfg.data.retention_days is None:
        ch(
            Channel(
                "raw data retention",
                "data store",
                ", ".join(cfg.data.types),
                "partial",
                "no retention limit stated",
                "state a retention period in the data policy",
            )
        )
    return rep
