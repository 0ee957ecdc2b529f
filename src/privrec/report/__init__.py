"""Privacy reports: what was trained, what it achieves, and what it promises."""

from privrec.report.html import ReportRow, privacy_utility_plot, write_html_report

__all__ = ["ReportRow", "privacy_utility_plot", "write_html_report"]
