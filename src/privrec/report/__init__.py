"""Privacy reports: what was trained, what it achieves, and what it promises."""

from privrec.report.compare import ModelSpec, ReportRow, run_comparison, scoped_params
from privrec.report.html import privacy_utility_plot, write_html_report, write_json_report

__all__ = [
    "ModelSpec",
    "ReportRow",
    "privacy_utility_plot",
    "run_comparison",
    "scoped_params",
    "write_html_report",
    "write_json_report",
]
