"""``privrec audit …``: attack a private model to measure how private it is.

``run`` is the one-run audit (a CI gate: ``--fail-on-flag`` exits 1 when the ε lower
bound exceeds the claimed ε or the audit is inconclusive), ``multi-run`` the
many-trainings audit on small data, ``mia`` the membership attack on recommendation lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from privrec.cli.common import (
    OptionalDataOpt,
    check_output,
    console,
    err_console,
    handle_errors,
    load_data,
    parse_params,
    privacy_params,
)
from privrec.errors import ConfigError

audit_app = typer.Typer(
    help="Empirical privacy: ε lower bounds from canaries, membership inference.",
    no_args_is_help=True,
)

SyntheticOpt = Annotated[
    str | None,
    typer.Option(help="Use synthetic data instead: USERSxITEMS, e.g. 300x200."),
]
ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="dppopularity, dpease, dpals, federated_mf or silo_dpals."),
]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", help="Parameter key=value.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the results as JSON.")]
MdOpt = Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown table.")]


def _data(path: Path | None, synthetic: str | None, fmt: str | None, binarize: float | None) -> Any:
    if (path is None) == (synthetic is None):
        raise ConfigError("give exactly one of --data and --synthetic")
    if synthetic is not None:
        from privrec.data import synthetic as make

        try:
            users, items = (int(v) for v in synthetic.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--synthetic expects USERSxITEMS, found {synthetic!r}") from None
        return make(n_users=users, n_items=items, seed=0)
    assert path is not None
    return load_data(path, fmt, binarize if binarize is not None else 0.0)


def _target(model: str, params: list[str] | None, eps: float, delta: float, unit: str) -> Any:
    from privrec.audit import make_target

    if unit not in ("user", "interaction"):
        raise ConfigError(f"unknown privacy unit {unit!r}; choose user or interaction")
    p = {**parse_params(params), **privacy_params(eps, delta, unit)}
    if model in ("federated_mf", "silo_dpals"):
        p.pop("unit", None)
    return make_target(model, **p)


def _write(results: list[Any], json_out: Path | None, md_out: Path | None) -> None:
    from privrec.audit.report import to_json, to_markdown

    if json_out is not None:
        json_out.write_text(to_json(results) + "\n")
    if md_out is not None:
        md_out.write_text(to_markdown(results))


@audit_app.command("run")
def audit_run(
    model: ModelOpt,
    epsilon: Annotated[float, typer.Option(help="Claimed ε to audit.")],
    delta: Annotated[float, typer.Option(help="δ of the guarantee.")] = 1e-5,
    unit: Annotated[str, typer.Option(help="Privacy unit: user or interaction.")] = "user",
    data: OptionalDataOpt = None,
    synthetic: SyntheticOpt = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    binarize: Annotated[float | None, typer.Option(help="Keep values >= threshold.")] = None,
    param: ParamOpt = None,
    canaries: Annotated[int, typer.Option(help="m, canary users.")] = 2000,
    design: Annotated[
        list[str] | None,
        typer.Option(
            help="Canary designs: tight, heavy (user unit), clip (factor models); default all "
            "the model's designs for the unit."
        ),
    ] = None,
    confidence: Annotated[float, typer.Option(help="Confidence of the bound.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the canary inclusion bits.")] = 0,
    fail_on_flag: Annotated[
        bool,
        typer.Option(
            help="Exit 1 when the bound exceeds the claimed ε, or when the audit is "
            "inconclusive (it could not have flagged): a CI gate."
        ),
    ] = False,
    json_out: JsonOpt = None,
    md_out: MdOpt = None,
) -> None:
    """One-run audit (Steinke, Nasr & Jagielski 2023): ε lower bound from one training."""
    from privrec.audit import audit_model

    with handle_errors():
        for out in (json_out, md_out):  # before the trainings
            check_output(out)
        base = _data(data, synthetic, fmt, binarize)
        target = _target(model, param, epsilon, delta, unit)
        result = audit_model(
            target,
            base,
            n_canaries=canaries,
            designs=tuple(design) if design else None,
            confidence=confidence,
            seed=seed,
        )
        console.print(result.summary(), highlight=False)
        for a in result.audits:  # settings the audit chose for the model, said where seen
            for key, value in target.bound_override(a.design).items():
                err_console.print(
                    f"note: the {a.design.label} fit used {key}={value} (the model's default reads "
                    "it from a private length histogram the canaries would move); same claimed ε",
                    highlight=False,
                )
        if any(a.seeded_noise for a in result.audits):
            err_console.print("note: the model used seeded noise (reproducible, not private)")
        _write([result], json_out, md_out)
        _warn(result.issues, result.blind, "--canaries")
    if fail_on_flag and (result.flagged or not result.conclusive):
        raise typer.Exit(1)


@audit_app.command("multi-run")
def audit_multi_run(
    model: ModelOpt,
    epsilon: Annotated[float, typer.Option(help="Claimed ε to audit.")],
    delta: Annotated[float, typer.Option(help="δ of the guarantee.")] = 1e-5,
    unit: Annotated[str, typer.Option(help="Privacy unit: user or interaction.")] = "user",
    data: OptionalDataOpt = None,
    synthetic: SyntheticOpt = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    binarize: Annotated[float | None, typer.Option(help="Keep values >= threshold.")] = None,
    param: ParamOpt = None,
    runs: Annotated[int, typer.Option(help="Trainings (a multiple of 4).")] = 1000,
    confidence: Annotated[float, typer.Option(help="Confidence of the bound.")] = 0.95,
    fail_on_flag: Annotated[
        bool, typer.Option(help="Exit 1 when flagged or inconclusive (CI gate).")
    ] = False,
    json_out: JsonOpt = None,
    md_out: MdOpt = None,
) -> None:
    """Multi-run audit (Jagielski et al. 2020): many trainings with and without one canary."""
    from privrec.audit import multi_run_audit

    with handle_errors():
        for out in (json_out, md_out):  # before the trainings
            check_output(out)
        base = _data(data, synthetic, fmt, binarize)
        target = _target(model, param, epsilon, delta, unit)
        result = multi_run_audit(target, base, runs=runs, confidence=confidence)
        console.print(result.summary(), highlight=False)
        _write([result], json_out, md_out)
        _warn(result.issues, result.blind, "--runs")
    if fail_on_flag and (result.flagged or not result.conclusive):
        raise typer.Exit(1)


def _warn(issues: tuple[str, ...], blind: bool, more: str) -> None:
    """Say why an audit is inconclusive (it could not have flagged what it tests): "ok" would
    then mean nothing, and a CI gate must not pass on it (the result's ``conclusive``)."""
    for issue in issues:
        err_console.print(f"warning: inconclusive — {issue}", highlight=False)
    if blind:
        err_console.print(f"raise {more} so that the audit can flag the claim", highlight=False)


@audit_app.command("mia")
def audit_mia(
    model: Annotated[
        list[str], typer.Option("--model", "-m", help="Model name (repeat to compare).")
    ],
    epsilon: Annotated[float | None, typer.Option(help="ε for the private models.")] = None,
    delta: Annotated[float, typer.Option(help="δ for the private models.")] = 1e-5,
    unit: Annotated[str, typer.Option(help="Privacy unit of the private models.")] = "user",
    data: OptionalDataOpt = None,
    synthetic: SyntheticOpt = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
    binarize: Annotated[float | None, typer.Option(help="Keep values >= threshold.")] = None,
    param: ParamOpt = None,
    k: Annotated[int, typer.Option("-k", help="Length of the lists the attacker sees.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the member split.")] = 0,
    json_out: JsonOpt = None,
    md_out: MdOpt = None,
) -> None:
    """Membership inference from top-k lists: AUC for each model (0.5 = no leak)."""
    from privrec.audit.mia import recommendation_mia
    from privrec.cli.common import build_model
    from privrec.models import MODEL_REGISTRY
    from privrec.models.private import PrivateRecommender

    with handle_errors():
        base = _data(data, synthetic, fmt, binarize)
        results = []
        import privrec.models.all  # noqa: F401  (registers every model)

        for name in model:
            cls = MODEL_REGISTRY.get(name)
            params = parse_params(param)  # -p applies to every model given
            if cls is not None and issubclass(cls, PrivateRecommender):
                if epsilon is None:
                    raise ConfigError(f"{name} is a private model: give --epsilon")
                params.update(epsilon=epsilon, delta=delta, unit=unit)
            result = recommendation_mia(build_model(name, params), base, k=k, seed=seed)
            console.print(result.summary(), highlight=False)
            results.append(result)
        _write(results, json_out, md_out)
