"""Privacy risk assessment of a pipeline, and the compliance checks a team's CI runs."""

from privrec.risk.assessment import (
    EXAMPLE,
    Channel,
    PipelineConfig,
    RiskReport,
    assess,
    load_pipeline,
)
from privrec.risk.check import CheckConfig, CheckReport, Finding, load_check_config, run_check

__all__ = [
    "EXAMPLE",
    "Channel",
    "CheckConfig",
    "CheckReport",
    "Finding",
    "PipelineConfig",
    "RiskReport",
    "assess",
    "load_check_config",
    "load_pipeline",
    "run_check",
]
