"""An experiment's TOML: the data and split, the privacy variants, the statistics.

.. code-block:: toml

    [data]
    path = "../shared/data/ml-1m-implicit-r3"   # or: synthetic = "2000x500"
    protocol = "files"                           # files | holdout | leave-last-out | strong
    seed = 0

    [experiment]
    k = [20]
    repeats = 5            # noise draws per variant (common seeds across variants)
    baseline = "adaptive ε=1"   # what variants are compared with (default: the first)
    detect = 0.01          # difference the power estimate is for

    [[variant]]
    name = "adaptive ε=1"
    model = "dpals"
    params = { epsilon = 1.0, delta = 1e-5, unit = "user", method = "adaptive" }

    [[variant]]
    name = "tail ε=1"
    model = "dpals"
    params = { epsilon = 1.0, delta = 1e-5, unit = "user", method = "tail" }
    compare_to = "adaptive ε=1"   # optional, per variant

Every variant is trained on the same split; draw ``r`` of every variant uses model seed
``seed + r`` (common random numbers: the variants differ only in their settings), unless
``seeded = false`` asks for fresh CSPRNG noise per fit; a model without a ``seed`` (a
non-private baseline such as ``popularity``) is trained as it is. Seeded noise is for
experiments: the models trained here are never meant for release.

The experiment owns the noise seeds: a variant's ``params`` may not set ``seed`` (nor any
other setting that fixes the noise). A seed there would give every draw the same noise, the
between-draw variance would come out as zero and the intervals would count only the users
(measured: 7 of 20 95% intervals of an A/A test missed 0). Use ``seeded = true`` for
reproducible draws.

``data.synthetic`` is bounded (:data:`MAX_SYNTHETIC_SIDE` users or items,
:data:`MAX_SYNTHETIC_CELLS` user × item cells, :data:`MAX_SYNTHETIC_INTERACTIONS` expected
interactions): the generator scores every item for every user, and a size beyond these would
run out of memory or time instead of failing with a message.

The noise draw is the unit of replication (one draw moves every user's score together), so
the number of draws, not of users, sets how narrow an interval can be: with 2 draws a 95%
interval is up to 6.5 times as wide as with many, with 3 up to 2.2 times, with 5 at most 1.4
times (see :mod:`privrec.experiments.stats`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from privrec.errors import ConfigError

__all__ = [
    "MAX_SYNTHETIC_CELLS",
    "MAX_SYNTHETIC_INTERACTIONS",
    "MAX_SYNTHETIC_SIDE",
    "NOISE_FIXING_PARAMS",
    "DataSpec",
    "ExperimentConfig",
    "StatsSpec",
    "VariantSpec",
    "load_experiment",
    "noise_fixing",
    "synthetic_size",
]

#: variant params that would fix a model's noise across draws (refused: the experiment sets the
#: seeds, so that draws differ and the between-draw variance is measured, not assumed zero);
#: also refused: any other name ending in ``_seed``
NOISE_FIXING_PARAMS = frozenset({"seed", "random_state", "rng", "generator", "noise_seed"})
#: bounds of ``data.synthetic``: each side, user × item cells (the generator scores every item
#: for every user, ~1e9 cells take tens of seconds), expected interactions (~30 per user, each
#: kept in several arrays: 5e7 of them need a few GB)
MAX_SYNTHETIC_SIDE = 10_000_000
MAX_SYNTHETIC_CELLS = 5_000_000_000
MAX_SYNTHETIC_INTERACTIONS = 50_000_000
#: the generator's mean history length (``privrec.data.synthetic``'s default)
_SYNTHETIC_PER_USER = 30


def noise_fixing(params: dict[str, Any]) -> list[str]:
    """The names in ``params`` that would fix a model's noise across draws (sorted)."""
    return sorted(k for k in params if k in NOISE_FIXING_PARAMS or k.endswith("_seed"))


def synthetic_size(text: str) -> tuple[int, int]:
    """``"USERSxITEMS"`` as ``(users, items)``, within the bounds above.

    Raises
    ------
    ConfigError
        Not two positive integers, or a size past a bound (named in the message) — checked
        here because past them the generator fails with a ``MemoryError``, not a message.
    """
    try:
        users, items = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"data.synthetic expects USERSxITEMS, found {text!r}") from None
    if users < 1 or items < 1:
        raise ConfigError(f"data.synthetic needs at least 1 user and 1 item, found {text!r}")
    expected = users * min(_SYNTHETIC_PER_USER, items)
    if max(users, items) > MAX_SYNTHETIC_SIDE:
        bound = f"at most {MAX_SYNTHETIC_SIDE:,} users and {MAX_SYNTHETIC_SIDE:,} items"
    elif users * items > MAX_SYNTHETIC_CELLS:
        bound = f"users × items at most {MAX_SYNTHETIC_CELLS:,}"
    elif expected > MAX_SYNTHETIC_INTERACTIONS:
        bound = (
            f"at most {MAX_SYNTHETIC_INTERACTIONS:,} expected interactions "
            f"(about {_SYNTHETIC_PER_USER} per user)"
        )
    else:
        return users, items
    raise ConfigError(
        f"data.synthetic {text!r} is too large: {bound} (use a real data set for more)"
    )


Metric = Literal["recall", "ndcg", "coverage"]
_METRICS: tuple[Metric, ...] = ("recall", "ndcg", "coverage")


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    path: str | None = None
    synthetic: str | None = None
    format: str | None = None
    binarize: float | None = None
    protocol: Literal["files", "holdout", "leave-last-out", "strong"] = "holdout"
    test_fraction: float = pydantic.Field(default=0.2, gt=0, lt=1)
    seed: int = 0

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of data.path and data.synthetic")
        if self.synthetic is not None:
            try:
                synthetic_size(self.synthetic)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return self


class StatsSpec(_Strict):
    k: list[Annotated[int, pydantic.Field(ge=1, le=10_000)]] = pydantic.Field(
        default_factory=lambda: [20], min_length=1
    )
    metrics: list[Metric] = pydantic.Field(default_factory=lambda: list(_METRICS))
    #: at least 2: with one noise draw per variant nothing measures how much a draw moves every
    #: user at once, and intervals from the users alone come out far too narrow (measured in an
    #: A/A test: up to 22 of 60 95% intervals missed a true zero difference). 5 by default: with
    #: fewer, the interval is widened by t at 1–3 degrees of freedom, and reports flag it
    repeats: int = pydantic.Field(default=5, ge=2, le=100)
    seed: int = 0
    seeded: bool = True
    baseline: str | None = None
    #: resamples of the users for the catalogue-coverage comparison (capped at 300 there);
    #: Recall and NDCG need none (their intervals are analytic)
    bootstrap: int = pydantic.Field(default=1000, ge=50, le=100_000)
    confidence: float = pydantic.Field(default=0.95, gt=0, lt=1)
    detect: float = pydantic.Field(default=0.01, gt=0)
    alpha: float = pydantic.Field(default=0.05, gt=0, lt=1)
    power: float = pydantic.Field(default=0.8, gt=0, lt=1)
    groups: int = pydantic.Field(default=4, ge=1, le=10)


class VariantSpec(_Strict):
    name: str = pydantic.Field(min_length=1, max_length=100)
    model: str
    params: dict[str, Any] = pydantic.Field(default_factory=dict)
    #: the variant this one is compared with (default: the experiment's baseline)
    compare_to: str | None = None

    @pydantic.field_validator("params")
    @classmethod
    def _no_fixed_noise(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Refuse a seed: it would give every draw the same noise (see the module docstring)."""
        fixed = noise_fixing(params)
        if fixed:
            raise ValueError(
                f"params {', '.join(fixed)} would fix the noise of every draw, so the draws "
                "would be identical and the intervals too narrow; the experiment owns the noise "
                "seeds: remove it and set [experiment] seeded = true (and seed) for "
                "reproducible draws"
            )
        return params


class ExperimentConfig(_Strict):
    data: DataSpec
    experiment: StatsSpec = pydantic.Field(default_factory=StatsSpec)
    variant: list[VariantSpec] = pydantic.Field(min_length=1)

    @pydantic.model_validator(mode="after")
    def _names(self) -> ExperimentConfig:
        names = [v.name for v in self.variant]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        if self.experiment.baseline is not None and self.experiment.baseline not in names:
            raise ValueError(f"baseline {self.experiment.baseline!r} is not a variant")
        for v in self.variant:
            if v.compare_to is not None and (v.compare_to not in names or v.compare_to == v.name):
                raise ValueError(
                    f"variant {v.name!r}: compare_to {v.compare_to!r} is not another variant"
                )
        return self

    def reference_of(self, name: str) -> str | None:
        """The variant ``name`` is compared with (``None`` for the baseline itself)."""
        v = next(v for v in self.variant if v.name == name)
        ref = v.compare_to or self.baseline
        return None if ref == name else ref

    @property
    def baseline(self) -> str:
        return self.experiment.baseline or self.variant[0].name


def load_experiment(source: str | Path | dict[str, Any]) -> ExperimentConfig:
    """Parse and validate an experiment from a TOML file, TOML text or a dict.

    Raises
    ------
    ConfigError
        For every problem with the experiment itself — a missing, unreadable or non-UTF-8
        file, invalid TOML, an invalid setting, a variant seed — so that nothing is loaded or
        charged for an experiment that cannot run as written.
    """
    if isinstance(source, dict):
        raw = source
    else:
        text = source
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source):
            path = Path(source)
            try:
                is_file = path.is_file()
            except OSError as exc:  # e.g. a name too long for the file system
                raise ConfigError(
                    f"experiment file {str(path)[:80]!r} cannot be read: {exc.strerror or exc}"
                ) from None
            if not is_file:
                raise ConfigError(f"experiment file {str(path)!r} not found")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(
                    f"experiment file {str(path)!r} is not UTF-8 text (byte {exc.start}); "
                    "save it as UTF-8"
                ) from None
            except OSError as exc:
                raise ConfigError(
                    f"experiment file {str(path)!r} cannot be read: {exc.strerror or exc}"
                ) from None
        try:
            raw = tomllib.loads(str(text))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"experiment is not valid TOML: {exc}") from None
        except RecursionError:  # tomllib recurses once per nested array or inline table
            raise ConfigError("experiment is nested too deeply to be an experiment") from None
    try:
        return ExperimentConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        variants = raw.get("variant") if isinstance(raw, dict) else None
        if len(loc) >= 2 and loc[0] == "variant" and isinstance(loc[1], int):
            # name the variant, not its index
            v = variants[loc[1]] if isinstance(variants, list) and loc[1] < len(variants) else None
            if isinstance(v, dict) and isinstance(v.get("name"), str):
                loc[1] = repr(v["name"])
        where = ".".join(str(p) for p in loc) or "experiment"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"experiment: {where}: {msg}") from None
