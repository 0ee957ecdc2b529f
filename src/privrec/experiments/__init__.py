"""Offline A/B tests of privacy variants: one split, repeated noise draws, paired statistics
with the noise draw as the unit of replication.

See :mod:`privrec.experiments.config` for the TOML, :func:`run_experiment` to run it and
:func:`write_report` for the HTML report.
"""

from privrec.experiments.config import ExperimentConfig, VariantSpec, load_experiment
from privrec.experiments.report import write_report
from privrec.experiments.runner import (
    ChargeHook,
    ExperimentResult,
    LedgerCharge,
    VariantResult,
    run_experiment,
)
from privrec.experiments.stats import (
    PairedComparison,
    VarianceComponents,
    paired_comparison,
    power,
    repeats_needed,
    users_needed,
)

__all__ = [
    "ChargeHook",
    "ExperimentConfig",
    "ExperimentResult",
    "LedgerCharge",
    "PairedComparison",
    "VarianceComponents",
    "VariantResult",
    "VariantSpec",
    "load_experiment",
    "paired_comparison",
    "power",
    "repeats_needed",
    "run_experiment",
    "users_needed",
    "write_report",
]
