"""``privrec tune`` and ``privrec train-tiers``: privacy-budget features of the private models.

``tune`` picks hyper-parameters on the data itself and charges the selection to ε
(:func:`privrec.tuning.private_tune`); ``train-tiers`` fits DPPopularity or DPALS with
protection tiers, each user's tier read from a CSV file (:mod:`privrec.privacy.personalized`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from privrec.cli.common import (
    ApiKeyOpt,
    DataOpt,
    DatasetOpt,
    LedgerOpt,
    PurposeOpt,
    SignKeyOpt,
    build_model,
    console,
    err_console,
    handle_errors,
    load_data,
    parse_params,
    privacy_params,
    read_config,
    signing_key,
)
from privrec.errors import ConfigError, DataError
from privrec.privacy.personalized import declared_tiers, resolve_tiers

__all__ = ["train_tiers", "tune"]


def tune(
    data_path: DataOpt,
    model_name: Annotated[
        str, typer.Option("--model", "-m", help="dpals, dpease or dppopularity.")
    ],
    grid: Annotated[
        Path, typer.Option("--grid", "-g", help="TOML file with \\[\\[candidates]] tables.")
    ],
    epsilon: Annotated[float, typer.Option(help="Budget ε of the whole selection.")],
    delta: Annotated[float, typer.Option(help="Budget δ.")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("model.npz"),
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    binarize: Annotated[float | None, typer.Option(help="Keep values >= threshold as 1.")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Shared key=value for every candidate."),
    ] = None,
    mean_trials: Annotated[
        float | None, typer.Option(help="Mean number of trials (default 2 × candidates).")
    ] = None,
    sign_key: SignKeyOpt = None,
) -> None:
    """Tune on the data itself, paying for it: the saved model's guarantee covers the selection.

    The grid file lists candidates, e.g. ``\\[\\[candidates]]`` / ``factors = 8`` /
    ``\\[\\[candidates]]`` / ``popularity_shrinkage = 0.0``. Only the chosen candidate and its
    noisy validation score are released (Papernot & Steinke 2022; the number of trials is not).
    Not charged to a ledger: tune on data you govern outside it, or train through
    ``privrec train --dataset`` with the chosen candidate.
    """
    with handle_errors():
        signer = signing_key(sign_key)
        candidates = read_config(grid).get("candidates")
        if (
            not isinstance(candidates, list)
            or not candidates
            or not all(isinstance(c, dict) for c in candidates)
        ):
            raise ConfigError(f"{grid}: needs a non-empty array of 'candidates' tables")
        probe = build_model(model_name, {"epsilon": epsilon, "delta": delta, "unit": "user"})
        data = load_data(data_path, fmt, binarize)
        from privrec.tuning import private_tune

        with err_console.status(f"tuning {probe.name} privately…"):
            res = private_tune(
                type(probe),
                [dict(c) for c in candidates],
                data,
                epsilon=epsilon,
                delta=delta,
                mean_trials=mean_trials,
                base_params=parse_params(param),
            )
        saved = res.model.save(output, signing_key=signer)
        g = res.guarantee
        console.print(  # never the number of trials: the selection's bound holds only if it stays hidden
            f"chose {res.params or 'the defaults'} (noisy validation score "
            f"{res.noisy_score:.1f}; each trial's model at ε = {res.trial_epsilon:.3g}) → {saved}"
        )
        console.print(f"privacy: ({g.epsilon:.3g}, {g.delta:.1e})-DP per user, selection included")


def train_tiers(
    data_path: DataOpt,
    model_name: Annotated[str, typer.Option("--model", "-m", help="dpals or dppopularity.")],
    tiers_file: Annotated[
        Path, typer.Option("--user-epsilons", help="CSV: user,epsilon (one row per user).")
    ],
    epsilon: Annotated[float, typer.Option(help="The loosest tier's ε (the model's).")],
    delta: Annotated[float, typer.Option(help="Budget δ.")],
    tiers: Annotated[str, typer.Option(help="Stricter tiers on offer, e.g. 0.5,1.")],
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("model.npz"),
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    binarize: Annotated[float | None, typer.Option(help="Keep values >= threshold as 1.")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p")] = None,
    sign_key: SignKeyOpt = None,
    ledger: LedgerOpt = None,
    dataset: DatasetOpt = None,
    purpose: PurposeOpt = None,
    key: ApiKeyOpt = None,
) -> None:
    """Fit with protection tiers: each user gets the ε they asked for (a declared tier).

    With --dataset (and --ledger), the data goes through the dataset's policy (consent,
    retention, deletions) and the fit is charged to its budget like ``privrec train``: the
    dataset is charged the loosest tier's ε (the model's), the worst case over its users.
    Every user of the data file needs a row, checked before the policy runs: users the policy
    removes are not trained on and their rows are ignored, but the file is never checked against
    the users it kept — a refusal naming who lacks a row would tell the analyst, for free, whom
    the policy removed (a deletion or a withdrawn consent).
    """
    with handle_errors():
        signer = signing_key(sign_key)
        if model_name not in ("dpals", "dppopularity"):
            raise ConfigError(
                f"protection tiers exist for dpals and dppopularity, not {model_name!r}"
            )
        try:
            offered = tuple(float(t) for t in tiers.split(",") if t.strip())
        except ValueError:
            raise ConfigError(
                f"--tiers expects numbers separated by commas, found {tiers!r}"
            ) from None
        given = parse_params(param)
        if "unit" in given:  # set by the command itself: never silently overridden
            raise ConfigError("-p unit=… is not accepted: protection tiers are per user")
        for name in ("tiers", "epsilon", "delta"):  # (``key`` is the API key)
            if name in given:
                raise ConfigError(f"-p {name}=… is not accepted here: use --{name}")
        params: dict[str, Any] = {
            **given,
            **privacy_params(epsilon, delta, "user"),
            "tiers": offered,
        }
        model = build_model(model_name, params)
        data = load_data(data_path, fmt, binarize)
        # every row checked against the whole file before anything is charged or fitted — before
        # the policy too: what the check says may not depend on whom the policy removed
        ids = np.asarray(data.user_ids)
        declared = resolve_tiers(epsilon, offered)
        asks = read_user_epsilons(tiers_file, ids, tiers=declared)
        if dataset is None and ledger is None:
            with err_console.status(f"fitting {model.name} with protection tiers…"):
                model.fit(data, user_epsilons=asks)
            saved = model.save(output, signing_key=signer)
        else:
            if dataset is None:
                raise ConfigError("--ledger needs --dataset NAME (the ledger dataset to charge)")
            from privrec.governance.training import train_from_cli

            by_user = dict(zip(ids.tolist(), asks.tolist(), strict=True))

            def fit(m: Any, governed: Any) -> None:  # the policy may have removed users
                kept_ids = np.asarray(governed.user_ids)
                kept = np.asarray([by_user[u] for u in kept_ids.tolist()], dtype=np.float64)
                with err_console.status(f"fitting {m.name} with protection tiers…"):
                    m.fit(governed, user_epsilons=kept)

            rec, spent = train_from_cli(
                model, data, url=ledger, api_key=key, dataset=dataset, purpose=purpose,
                output=output, include_user_data=None, fit=fit, signing_key=signer,
            )  # fmt: skip
            saved = rec.path
            console.print(
                f"ledger: charge {rec.charge.id} committed, artifact {rec.artifact.id}; "
                f"{dataset!r} spent ε = {spent.composed_epsilon:.4g} composed of {spent.epsilon:g}, "
                f"remaining {spent.remaining:.4g}",
                highlight=False,
            )
        for t in model.privacy_guarantee.tiers:
            console.print(
                f"tier ε = {t['requested_epsilon']:g}: weight {t['weight']:.3g}, "
                f"({t['epsilon']:.3g}, {delta:.1e})-DP"
            )
        console.print(f"→ {saved}")


def read_user_epsilons(
    path: Path,
    user_ids: np.ndarray,
    *,
    every_user: bool = True,
    tiers: Sequence[float] | None = None,
) -> np.ndarray:
    """Each training user's requested ε from ``user,epsilon`` rows (NaN for a user without one).

    Every row is checked (two columns, a known user, a finite number, no user twice — a repeat
    could silently move someone to a looser tier, and with ``tiers`` one of the declared
    tiers); errors name the file's own line numbers. ``every_user``: every user of
    ``user_ids`` must have a row. Run on the whole file before any policy: a refusal must not
    depend on whom the policy removed.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # a BOM (from Excel) is not a name
            reader = csv.reader(fh)
            rows = [(reader.line_num, r) for r in reader if r and not r[0].startswith("#")]
    except FileNotFoundError:
        raise ConfigError(f"user-epsilons file {str(path)!r} not found") from None
    except UnicodeDecodeError:
        raise DataError("the file is not UTF-8 text", field=str(path)) from None
    if rows and [c.strip() for c in rows[0][1][:2]] == ["user", "epsilon"]:
        rows = rows[1:]
    index = {str(u): i for i, u in enumerate(user_ids.tolist())}
    out = np.full(len(user_ids), np.nan)
    for line, row in rows:
        where = f"{path}:{line}"
        if len(row) != 2:
            raise DataError("expected two columns", field=where, expected="user,epsilon")
        u, raw = row[0].strip(), row[1].strip()
        if u not in index:
            raise DataError("unknown user", field=where, found=u)
        if not np.isnan(out[index[u]]):
            raise DataError("a user has more than one row", field=where, found=u)
        try:
            value = float(raw)
        except ValueError:
            raise DataError("epsilon is not a number", field=where, found=raw) from None
        if not np.isfinite(value):
            raise DataError("epsilon is not a finite number", field=where, found=raw)
        if tiers is not None and not declared_tiers(np.array([value]), tiers)[1][0]:
            raise DataError(
                "not a declared tier",
                field=where,
                expected="one of " + ", ".join(f"{t:g}" for t in tiers),
                found=raw,
            )
        out[index[u]] = value
    if every_user:
        require_tiers(out, user_ids, str(path))
    return out


def require_tiers(asks: np.ndarray, user_ids: np.ndarray, where: str) -> None:
    """Every user of ``user_ids`` has a requested ε (no NaN left in ``asks``)."""
    missing = np.flatnonzero(np.isnan(asks))
    if missing.size:
        raise DataError(
            "every training user needs a tier",
            field=where,
            expected="one row per user",
            found=f"{missing.size} users without one, e.g. {str(user_ids[missing[0]])!r}",
        )
