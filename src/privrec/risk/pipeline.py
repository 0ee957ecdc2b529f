"""The pipeline description the risk assessment reads, and the rules that make it consistent.

A description the assessment cannot read unambiguously is refused with a one-line
:class:`~privrec.errors.ConfigError` naming the key, never assessed on a guess: an assessment
of a pipeline that cannot exist (a centrally trained model in a federated setting, queries
"charged" to a ledger that is switched off, federated settings of a central pipeline) would
report mitigations nobody has. So:

* values are **strict** — ``epsilon = true`` is not ε = 1, ``seeded_noise = 1`` is not a
  boolean, a retention of ``nan`` or ``-5`` days is not a limit (``inf`` is accepted and read
  as *no limit*);
* the **model** is one the assessment knows (case-insensitive, ``_``/``-`` ignored), and it
  belongs to the stated ``training.setting``;
* a section, or a key, that does not apply to the rest of the description is an error, not
  silently ignored: ``[federated]`` needs ``setting = "federated"``, ``[cross_silo]`` needs
  ``setting = "cross-silo"``, ``analytics.ledger`` / ``monitoring.ledger`` need DP releases
  and an enabled ``[ledger]``, the monitoring quality keys need monitoring.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from privrec.errors import ConfigError

__all__ = ["EXAMPLE", "MODELS", "ModelKind", "PipelineConfig", "load_pipeline"]

Setting = Literal["central", "federated", "cross-silo"]

EXAMPLE = """
[pipeline]
name = "movie recommendations"

[data]
types = ["ratings", "timestamps", "user ids"]
retention_days = 365         # inf = no limit

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
retention_days = 30          # inf = no limit

[monitoring]
kind = "dp"                  # none | dp | raw
ledger = true                # windows charged to the [ledger] (privrec monitor run --db)
quality = true               # also release the [training] model's quality per window
quality_training_users = "overlapping"  # overlapping | disjoint (with the monitored users)

[ledger]
enabled = true
"""


@dataclass(frozen=True)
class ModelKind:
    """What the assessment needs to know about a model: is it DP, and where is it trained."""

    private: bool
    setting: Setting


#: Every model the assessment knows. An unknown name is refused rather than assessed as
#: "not differentially private": a typo must not turn a private pipeline into a failing one,
#: nor a made-up name into a verdict.
MODELS: dict[str, ModelKind] = {
    "dpals": ModelKind(True, "central"),
    "dpease": ModelKind(True, "central"),
    "dppopularity": ModelKind(True, "central"),
    "federated_mf": ModelKind(True, "federated"),
    "federated_dpals": ModelKind(True, "federated"),
    "silo_dpals": ModelKind(True, "cross-silo"),
    "silo_dpease": ModelKind(True, "cross-silo"),
    "als": ModelKind(False, "central"),
    "ease": ModelKind(False, "central"),
    "itemknn": ModelKind(False, "central"),
    "popularity": ModelKind(False, "central"),
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


_ALIASES = {_key(name): name for name in MODELS}


def _canonical_model(name: str) -> str:
    """``name`` as :data:`MODELS` spells it (``DPALS``, ``FederatedMF`` are accepted)."""
    found = _ALIASES.get(_key(name))
    if found is None:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return found


def _retention(value: float | None) -> float | None:
    """A retention period in days: ``inf`` is "no limit"; NaN and negative periods are refused
    (they are no period at all, and must not be reported as a limit)."""
    if value is None:
        return None
    if math.isnan(value):
        raise ValueError("retention_days is NaN: give a number of days ≥ 0, or inf for no limit")
    if value < 0:
        raise ValueError(
            f"retention_days = {value:g} is negative: give a number of days ≥ 0, or inf for "
            "no limit"
        )
    return value


RetentionDays = Annotated[float | None, pydantic.AfterValidator(_retention)]


class _S(pydantic.BaseModel):
    # strict: a TOML boolean is not a number, a number is not a boolean
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=True)


class PipelineSection(_S):
    name: str = "recommender pipeline"


class DataSection(_S):
    types: list[str] = pydantic.Field(default_factory=lambda: ["interactions", "user ids"])
    retention_days: RetentionDays = None  # None: not stated; inf: no limit


class TrainingSection(_S):
    model: Annotated[str, pydantic.AfterValidator(_canonical_model)]
    epsilon: float | None = pydantic.Field(default=None, gt=0, allow_inf_nan=False)
    delta: float | None = pydantic.Field(default=None, gt=0, lt=1, allow_inf_nan=False)
    unit: Literal["user", "interaction"] | None = None
    setting: Setting = "central"
    seeded_noise: bool = False
    include_user_data: bool = False


class FederatedSection(_S):
    secure_aggregation: bool = True
    aggregation: Literal["central", "distributed"] = "distributed"
    clipping: bool = True


class CrossSiloSection(_S):
    servers: int = pydantic.Field(default=2, ge=1)
    non_collusion: bool = True


class ServingSection(_S):
    scoring: Literal["server", "on-device", "he", "mpc"] = "server"
    lists_shown_to_others: bool = False


class AnalyticsSection(_S):
    queries: Literal["none", "dp", "raw"] = "none"
    ledger: bool = False  # DP queries charged to the [ledger]


class LogsSection(_S):
    user_ids: Literal["none", "pseudonymised", "raw"] = "raw"
    retention_days: RetentionDays = None  # None: not stated; inf: no limit


class MonitoringSection(_S):
    """Drift monitoring (``privrec monitor run``).

    ``quality`` says the monitor also releases the quality (recall) of the pipeline's model
    (``[training]``, given to ``privrec monitor run --model``) on each window.
    ``quality_training_users`` says whether that model was trained on users who are also
    monitored (``overlapping``, the default and the usual case) or on users disjoint from them
    (``disjoint``). It matters because the quality release's sensitivity assumes the model is
    fixed: a non-private model trained on a monitored user changes with that user, and with it
    every other user's recall, so the release then has no valid DP guarantee.
    """

    kind: Literal["none", "dp", "raw"] = "none"
    ledger: bool = False  # windows charged to the [ledger]
    quality: bool = False
    quality_training_users: Literal["overlapping", "disjoint"] = "overlapping"


class LedgerSection(_S):
    enabled: bool = False


class PipelineConfig(_S):
    """A pipeline description (see :data:`EXAMPLE` and the module docstring's rules)."""

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

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        """Refuse what does not apply: assessing it would report a mitigation nobody has."""
        t = self.training
        kind = MODELS[t.model]
        if kind.setting != t.setting:
            raise ValueError(
                f"training.model: {t.model} is trained in the {kind.setting!r} setting, but "
                f"training.setting = {t.setting!r}; use a {t.setting} model ("
                + ", ".join(n for n, k in MODELS.items() if k.setting == t.setting)
                + f") or setting = {kind.setting!r}"
            )
        for section, applies in (("federated", "federated"), ("cross_silo", "cross-silo")):
            given = getattr(self, section)
            if given is not None and t.setting != applies:
                keys = sorted(given.model_fields_set)
                where = f"{section}.{keys[0]}" if keys else f"[{section}]"
                raise ValueError(
                    f"{where}: [{section}] applies only when training.setting = {applies!r} "
                    f"(found {t.setting!r}); remove it or change the setting"
                )
        a, m = self.analytics, self.monitoring
        if a.ledger and a.queries != "dp":
            raise ValueError(
                f"analytics.ledger: only DP queries can be charged to a ledger (analytics.queries "
                f"= {a.queries!r})"
            )
        if m.ledger and m.kind != "dp":
            raise ValueError(
                f"monitoring.ledger: only DP monitoring can be charged to a ledger "
                f"(monitoring.kind = {m.kind!r})"
            )
        for key, charged in (("analytics.ledger", a.ledger), ("monitoring.ledger", m.ledger)):
            if charged and not self.ledger.enabled:
                raise ValueError(f"{key}: charged to a ledger, but ledger.enabled = false")
        if m.quality and m.kind == "none":
            raise ValueError(
                "monitoring.quality: there is no monitoring (monitoring.kind = 'none')"
            )
        if "quality_training_users" in m.model_fields_set and not m.quality:
            raise ValueError(
                "monitoring.quality_training_users: no model quality is monitored "
                "(monitoring.quality = false)"
            )
        return self


def _message(err: Any) -> str:
    """One line for a pydantic error: where, what, and the value found."""
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "value_error":  # our own validators: the message names the key itself
        msg = str(err["ctx"]["error"])
        return (
            f"pipeline: {where}: {msg}"
            if where and not msg.startswith(where)
            else (f"pipeline: {msg}")
        )
    found = err.get("input")
    shown = "" if isinstance(found, dict) else f" (found {found!r})"
    return f"pipeline: {where or 'pipeline'}: {err['msg']}{shown}"


def load_pipeline(source: str | Path | dict[str, Any]) -> PipelineConfig:
    """Parse a pipeline description (TOML file, TOML text or dict) and check it is consistent.

    Raises
    ------
    ConfigError
        One line naming the key, for anything the module docstring's rules refuse, an
        unreadable file, or TOML that does not parse.
    """
    if isinstance(source, dict):
        raw = source
    elif isinstance(source, (str, Path)):
        text = str(source)
        if isinstance(source, Path) or "\n" not in text:
            path = Path(source)
            try:
                is_dir, is_file = path.is_dir(), path.is_file()
            except OSError as exc:  # e.g. a name too long for the file system
                raise ConfigError(
                    f"pipeline file {str(path)[:80]!r} cannot be read: {exc.strerror or exc}"
                ) from None
            if is_dir:
                raise ConfigError(f"pipeline file {str(path)!r} is a folder, not a file")
            if not is_file:
                raise ConfigError(f"pipeline file {str(path)!r} not found")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"pipeline file {str(path)!r} is not UTF-8 text") from None
            except OSError as exc:
                raise ConfigError(
                    f"pipeline file {str(path)!r} cannot be read: {exc.strerror or exc}"
                ) from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"pipeline is not valid TOML: {exc}") from None
        except RecursionError:  # tomllib recurses once per nested array or inline table
            raise ConfigError(
                "pipeline is nested too deeply to be a pipeline description"
            ) from None
    else:
        raise ConfigError(
            f"a pipeline is a TOML file, TOML text or a dict, not {type(source).__name__}"
        )
    try:
        return PipelineConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ConfigError(_message(exc.errors()[0])) from None
