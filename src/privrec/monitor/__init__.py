"""Drift monitoring under differential privacy: DP window histograms and noise-aware alarms.

See :mod:`privrec.monitor.core` for the releases and tests, :mod:`privrec.monitor.streams`
for synthetic streams with injected shifts and for splitting real data into time windows.
"""

from privrec.monitor.core import (
    DriftMonitor,
    LedgerWindowCharge,
    MonitorConfig,
    WindowReport,
    activity_buckets,
    drift_statistic,
)
from privrec.monitor.streams import synthetic_stream, time_windows

__all__ = [
    "DriftMonitor",
    "LedgerWindowCharge",
    "MonitorConfig",
    "WindowReport",
    "activity_buckets",
    "drift_statistic",
    "synthetic_stream",
    "time_windows",
]
