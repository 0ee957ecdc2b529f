"""Measure a monitor on synthetic streams: detection delay after a shift, false-alarm rate before it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import scipy.sparse as sp

from privrec.errors import ConfigError
from privrec.monitor.core import DriftMonitor, WindowReport, monitor_config
from privrec.monitor.streams import SHIFTS, Shift, synthetic_stream

__all__ = ["SimulationResult", "check_simulation", "simulate"]


@dataclass
class SimulationResult:
    """Delays (windows from the shift to the first alarm; ``None``: missed) and false alarms."""

    shift: str
    shift_at: int | None
    delays: list[int | None]
    false_alarms: int
    tested_windows: int
    false_alarm_rate_stated: float
    epsilon_per_window: float
    epsilon_total: float
    last_reports: list[WindowReport] = field(default_factory=list)

    @property
    def false_alarm_rate(self) -> float:
        return self.false_alarms / self.tested_windows if self.tested_windows else 0.0

    def summary(self) -> str:
        fa = (
            f"false alarms {self.false_alarms}/{self.tested_windows} windows before the shift "
            f"({self.false_alarm_rate:.3f}; stated per test {self.false_alarm_rate_stated:g})"
        )
        if self.shift_at is None:
            return f"no shift: {fa}; ε per window {self.epsilon_per_window:g}, all windows {self.epsilon_total:.3g}"
        return (
            f"{self.shift} shift at window {self.shift_at}: detection delay per stream "
            f"{['missed' if d is None else d for d in self.delays]} windows; {fa}; "
            f"ε per window {self.epsilon_per_window:g}, all windows {self.epsilon_total:.3g}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "shift": self.shift,
            "shift_at": self.shift_at,
            "delays": self.delays,
            "false_alarms": self.false_alarms,
            "tested_windows": self.tested_windows,
            "false_alarm_rate": self.false_alarm_rate,
            "false_alarm_rate_stated": self.false_alarm_rate_stated,
            "epsilon_per_window": self.epsilon_per_window,
            "epsilon_total": self.epsilon_total,
        }


def check_simulation(
    shift: str,
    shift_at: int | None,
    shift_size: float,
    n_windows: int,
    track_quality: bool | None = None,
) -> None:
    """A :class:`~privrec.errors.ConfigError` for a simulation whose summary would mean nothing.

    The shift must be a known one, of finite size, starting inside the monitored stream and
    after the reference windows (with quality tracking, the first 3 windows train the model
    and are not monitored), so that windows before it are tested for false alarms and windows
    from it on for detection.
    """
    if shift not in SHIFTS:
        raise ConfigError(f"unknown shift {shift!r}; choose one of: {', '.join(SHIFTS)}")
    if not (isinstance(shift_size, int | float) and 0 <= shift_size <= 10):  # also NaN
        raise ConfigError(f"shift_size must be in [0, 10], found {shift_size!r}")
    if not (isinstance(n_windows, int) and n_windows >= 2):
        raise ConfigError(f"n_windows must be an integer >= 2, found {n_windows!r}")
    quality = shift == "quality" if track_quality is None else track_quality
    first = 4 if quality else 1  # the first monitored window
    reference = 3  # MonitorConfig.reference_windows' default: tests start after them
    if shift == "none":
        return
    earliest = first + reference + 1  # at least one tested window before the shift
    if not (isinstance(shift_at, int) and earliest <= shift_at <= n_windows):
        raise ConfigError(
            f"shift_at must be a window in [{earliest}, {n_windows}] (the monitor tests windows "
            f"from {first + reference} on{'; windows 1–3 train the tracked model' if quality else ''}), "
            f"found {shift_at!r}"
        )


def simulate(
    *,
    shift: Shift = "popularity",
    shift_at: int | None = 8,
    shift_size: float = 0.3,
    n_windows: int = 14,
    users_per_window: int = 1000,
    n_items: int = 300,
    trials: int = 3,
    epsilon: float = 1.0,
    delta: float = 1e-6,
    false_alarm: float = 0.01,
    track_quality: bool | None = None,
    seed: int = 0,
    noise_seed: int | None = None,
) -> SimulationResult:
    """Run ``trials`` streams; the first 3 windows train the tracked model (EASE) when quality is on.

    ``noise_seed`` seeds the monitor's noise (reproducible tests; warns, not private).
    """
    from privrec.models import EASE

    check_simulation(shift, shift_at, shift_size, n_windows, track_quality)
    cfg = monitor_config(epsilon_per_window=epsilon, delta=delta, false_alarm=false_alarm)
    if not (isinstance(trials, int) and trials >= 1):
        raise ConfigError(f"trials must be a positive integer, found {trials!r}")
    quality = shift == "quality" if track_quality is None else track_quality
    delays: list[int | None] = []
    fa = tested = 0
    total = 0.0
    last: list[WindowReport] = []
    for t in range(trials):
        stream = synthetic_stream(
            n_windows,
            users_per_window,
            n_items,
            shift=shift,
            shift_at=shift_at,
            shift_size=shift_size,
            seed=seed + t,
        )
        model = EASE(regularization=50.0).fit(sp.vstack(stream[:3])) if quality else None
        mon = DriftMonitor(
            cfg.model_copy(update={"seed": None if noise_seed is None else noise_seed + t}),
            n_items,
            model=model,
            # the stream draws fresh users every window: the model's training windows (1–3)
            # hold none of the monitored users
            model_trained_elsewhere=True,
        )
        delay: int | None = None
        start = 4 if quality else 1  # the model's training windows are not monitored
        for i, w in enumerate(stream[start - 1 :], start=start):
            r = mon.observe(w)
            before = shift_at is None or i < shift_at
            if before and r.popularity_stat is not None:
                tested += 1
                fa += bool(r.alarms)
            if not before and delay is None and r.alarm:
                delay = i - int(shift_at or 0)
        delays.append(delay if shift_at is not None else None)
        total = mon.guarantee.epsilon
        last = mon.reports
    return SimulationResult(
        shift=shift,
        shift_at=shift_at,
        delays=delays if shift_at is not None else [],
        false_alarms=fa,
        tested_windows=tested,
        false_alarm_rate_stated=false_alarm,
        epsilon_per_window=epsilon,
        epsilon_total=float(total),
        last_reports=last,
    )
