"""``privrec monitor …``: drift of popularity, activity and quality under differential privacy."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.table import Table

from privrec.cli.common import check_delta_for_data, check_output, console, handle_errors, load_data
from privrec.errors import BudgetExceededError, ConfigError, PolicyViolation, PrivacyWarning
from privrec.monitor.core import monitor_config
from privrec.privacy.budget import warn_weak_budget

monitor_app = typer.Typer(
    help="DP histograms per time window and noise-aware drift alarms.", no_args_is_help=True
)

EpsOpt = Annotated[float, typer.Option("--epsilon", help="ε per window (user level).")]
DeltaOpt = Annotated[float, typer.Option(help="δ per window.")]
AlphaOpt = Annotated[float, typer.Option(help="False-alarm rate of each test under no drift.")]


def _table(reports: list[Any]) -> Table:
    t = Table(
        "window",
        "users (noisy)",
        "popularity D / thr",
        "activity D / thr",
        "quality",
        "alarms",
        "ε so far",
    )
    for r in reports:
        pop = (
            "—"
            if r.popularity_stat is None
            else f"{r.popularity_stat:.0f} / {r.popularity_threshold:.0f}"
        )
        act = (
            "—"
            if r.activity_stat is None
            else f"{r.activity_stat:.1f} / {r.activity_threshold:.1f}"
        )
        q = (
            "—"
            if r.quality is None
            else f"{r.quality:.3f}" + ("" if r.quality_z is None else f" (z {r.quality_z:+.1f})")
        )
        t.add_row(
            str(r.window),
            f"{r.noisy_users:,.0f}",
            pop,
            act,
            q,
            ", ".join(r.alarms) or "",
            f"{r.epsilon_so_far:.3g}",
        )
    return t


#: What a monitor's output takes as public besides its noisy statistics (time_windows' docstring).
MONITOR_ASSUMED_PUBLIC = (
    "the window grid (fixed calendar windows from the Unix epoch), the number of windows — the "
    "span of the data at the grid's resolution, which any window length the caller picks "
    "reveals, as does a request refused for spanning too many windows — and the item catalogue "
    "the statistics are over"
)


def _write(path: Path | None, reports: list[Any], extra: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)  # check_output allowed a new folder
        path.write_text(
            json.dumps(
                {
                    **extra,
                    "assumed_public": MONITOR_ASSUMED_PUBLIC,
                    "windows": [r.to_dict() for r in reports],
                },
                indent=2,
            )
            + "\n"
        )


@monitor_app.command("run")
def monitor_run(
    data: Annotated[Path, typer.Option("--data", "-d", help="Timestamped interaction file.")],
    epsilon: EpsOpt,
    days: Annotated[float, typer.Option(help="Window length in days.")] = 7.0,
    delta: DeltaOpt = 1e-6,
    false_alarm: AlphaOpt = 0.01,
    model: Annotated[
        Path | None, typer.Option(help="A saved model whose quality to track.")
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    max_items: Annotated[int, typer.Option(help="Items counted per user and window (B).")] = 20,
    json_out: Annotated[Path | None, typer.Option("--json", help="Window reports as JSON.")] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", envvar="PRIVREC_DB", help="Charge every window to this ledger."),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", envvar="PRIVREC_API_KEY", show_default=False)
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Ledger dataset to charge.")] = None,
    model_trained_elsewhere: Annotated[
        bool,
        typer.Option(
            help="Declare that a non-private --model was trained on data holding none of the "
            "monitored users (else it is refused: its quality has no valid sensitivity).",
        ),
    ] = False,
) -> None:
    """Monitor a timestamped interaction file window by window.

    Without --db/--dataset nothing is charged: every run releases the windows again, and
    nothing composes the runs (warned). The data's time span at the window grid's resolution
    is assumed public (see the JSON's ``assumed_public``).
    """
    from privrec.monitor import DriftMonitor, LedgerWindowCharge, time_windows
    from privrec.monitor.core import check_model_catalogue, tracked_model_assumption
    from privrec.monitor.streams import check_windows

    with handle_errors():
        check_output(json_out)  # before any window is charged
        cfg = monitor_config(
            epsilon_per_window=epsilon,
            delta=delta,
            false_alarm=false_alarm,
            max_items_per_user=max_items,
        )
        x = load_data(data, fmt)
        # δ against the raw data's size before the ledger records an access (checked again on
        # what the policy keeps, which can only be fewer users)
        check_delta_for_data({"epsilon": epsilon, "delta": delta, "unit": "user"}, x, False)
        check_windows(x, days)
        rec = None
        if model is not None:
            from privrec.models import load_model

            rec = load_model(model)
            # refused before the ledger records anything: another catalogue, and a non-private
            # model nobody declared trained elsewhere
            check_model_catalogue(rec, x.n_items, x.item_ids)
            tracked_model_assumption(rec, model_trained_elsewhere)
        if dataset is None:  # after the data and model are checked: a run that cannot start
            # (a missing file, no timestamps) must fail with its one error, not warn first
            warnings.warn(
                ("--db (or $PRIVREC_DB) without --dataset: " if db is not None else "")
                + "the windows are charged to no budget — each run releases them again and "
                "nothing composes the runs (record them with --db and --dataset)",
                PrivacyWarning,
                stacklevel=1,
            )
        charge = None
        if dataset is not None:
            from privrec.governance import Ledger

            # the dataset's policy first (deletions, consent, retention, minimisation, columns),
            # as for training: the monitor sees only what the policy lets through
            ledger = Ledger.connect(db, key)
            governed = ledger.load(dataset, x)
            x = governed.interactions
            if x.timestamps is None:
                raise PolicyViolation(
                    f"dataset {dataset!r}'s policy keeps no timestamps: nothing to window"
                )
            charge = LedgerWindowCharge(ledger, dataset, data=governed)
        check_delta_for_data({"epsilon": epsilon, "delta": delta, "unit": "user"}, x, False)
        with warnings.catch_warnings():  # warned above, once
            warnings.simplefilter("ignore", PrivacyWarning)
            mon = DriftMonitor(
                cfg,
                x.n_items,
                model=rec,
                model_trained_elsewhere=model_trained_elsewhere,
                charge=charge,
            )
        reports: list[Any] = []
        try:
            for w in time_windows(x, days):
                reports.append(mon.observe(w))
        except BudgetExceededError:
            if reports:  # what was charged and released is shown, not thrown away
                console.print(_table(reports))
                _write(json_out, reports, {"stopped": "budget exceeded"})
            raise
        console.print(_table(reports))
        g = mon.guarantee
        console.print(f"all windows together: ({g.epsilon:.3g}, {g.delta:.1e})-DP per user")
        warn_weak_budget(g.epsilon, what="all windows together: ", stacklevel=1)
        extra: dict[str, Any] = {"epsilon_total": g.epsilon, "delta": g.delta}
        if mon.model_assumption is not None:
            extra["tracked_model"] = mon.model_assumption
        _write(json_out, reports, extra)


@monitor_app.command("simulate")
def monitor_simulate(
    epsilon: EpsOpt = 1.0,
    shift: Annotated[
        str, typer.Option(help="none, popularity, activity or quality.")
    ] = "popularity",
    shift_at: Annotated[int, typer.Option(help="First shifted window.")] = 8,
    shift_size: Annotated[
        float, typer.Option(help="Size of the shift (share of items / relative).")
    ] = 0.3,
    windows: Annotated[int, typer.Option(help="Windows per stream.")] = 14,
    users: Annotated[int, typer.Option(help="Users per window.")] = 1000,
    items: Annotated[int, typer.Option(help="Catalogue size.")] = 300,
    trials: Annotated[int, typer.Option(help="Independent streams.")] = 3,
    delta: DeltaOpt = 1e-6,
    false_alarm: AlphaOpt = 0.01,
    json_out: Annotated[Path | None, typer.Option("--json", help="Summary as JSON.")] = None,
) -> None:
    """Synthetic streams with an injected shift: detection delay and false-alarm rate."""
    from privrec.monitor.evaluate import check_simulation, simulate
    from privrec.monitor.streams import Shift

    with handle_errors():
        if trials < 1 or windows < 2 or users < 1 or items < 2:
            raise ConfigError("--trials, --windows, --users and --items must be positive")
        check_simulation(shift, None if shift == "none" else shift_at, shift_size, windows)
        check_output(json_out)
        monitor_config(epsilon_per_window=epsilon, delta=delta, false_alarm=false_alarm)
        res = simulate(
            shift=cast(Shift, shift),
            shift_at=None if shift == "none" else shift_at,
            shift_size=shift_size,
            n_windows=windows,
            users_per_window=users,
            n_items=items,
            trials=trials,
            epsilon=epsilon,
            delta=delta,
            false_alarm=false_alarm,
        )
        console.print(_table(res.last_reports))
        console.print(res.summary(), highlight=False)
        if json_out is not None:
            json_out.write_text(json.dumps(res.to_dict(), indent=2) + "\n")
