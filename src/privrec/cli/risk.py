"""``privrec risk`` and ``privrec check``: a pipeline's risk assessment, and CI privacy checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from privrec.cli.common import (
    VerifyKeyOpt,
    check_output,
    console,
    err_console,
    handle_errors,
    print_plain,
)


def _check_outputs(outputs: list[Path | None], inputs: list[Path | None]) -> None:
    """Refuse, before any work, an output that cannot be written, is given twice, or would
    overwrite an input — so a run either writes every file or none."""
    from privrec.errors import OutputPathError

    seen: dict[Path, Path] = {p.resolve(): p for p in inputs if p is not None}
    for path in outputs:
        if path is None:
            continue
        check_output(path)
        key = path.resolve()
        if key in seen:
            raise OutputPathError(
                f"output {str(path)!r} is also {str(seen[key])!r}: give each file once"
            )
        seen[key] = path


def _write_all(files: list[tuple[Path, str]]) -> None:
    """Write every file atomically: each is staged in a temporary file beside its target and
    renamed over it only once *all* are staged, so an error (a full disk) leaves no file
    half-written and no output written while another failed."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, text in files:
            path.parent.mkdir(parents=True, exist_ok=True)  # check_output: creatable
            # a plain open (not mkstemp): the report gets the usual permissions, not 0600
            tmp = path.with_name(f".{path.name.lstrip('.')}.{os.getpid()}.{len(staged)}.tmp")
            staged.append((tmp, path))
            tmp.write_text(text, encoding="utf-8")
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def risk(
    config: Annotated[
        Path | None, typer.Argument(help="Pipeline description (TOML); see --example.")
    ] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write the assessment as Markdown.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write it as JSON.")] = None,
    strict: Annotated[
        bool, typer.Option(help="Exit 1 when any leakage channel is unmitigated.")
    ] = False,
    example: Annotated[bool, typer.Option(help="Print an example pipeline TOML and exit.")] = False,
) -> None:
    """Privacy risk assessment: data, touchpoints, leakage channels and their mitigations."""
    from privrec.risk import EXAMPLE, assess, load_pipeline

    if example:
        print_plain(EXAMPLE.strip())  # TOML: never wrapped, or it no longer parses
        return
    with handle_errors():
        if config is None:
            from privrec.errors import ConfigError

            raise ConfigError("give a pipeline TOML (or --example to print one)")
        _check_outputs([markdown, json_out], [config])  # before anything is written
        rep = assess(load_pipeline(config))
        md = rep.to_markdown()
        outputs = [(markdown, md), (json_out, rep.to_json() + "\n")]
        _write_all([(path, text) for path, text in outputs if path is not None])
        print_plain(md)  # a table row wrapped onto two lines is no longer a row
    if strict and rep.unmitigated:
        for c in rep.unmitigated:
            err_console.print(
                f"unmitigated: {c.name} — {c.mitigation}", highlight=False, markup=False
            )
        raise typer.Exit(1)


def check(
    artifacts: Annotated[
        list[Path] | None, typer.Argument(help="Model files (all are checked).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="check.toml.")] = None,
    release: Annotated[
        list[Path] | None, typer.Option(help="A file marked for release (repeat).")
    ] = None,
    max_epsilon: Annotated[float | None, typer.Option(help="Policy: largest ε allowed.")] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Also verify this ledger (audit log, charges, artifacts)."),
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", envvar="PRIVREC_API_KEY", show_default=False)
    ] = None,
    expect_head: Annotated[str | None, typer.Option(help="Pinned audit-log head hash.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the findings as JSON.")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print passed checks too.")
    ] = False,
    verify_key: VerifyKeyOpt = None,
) -> None:
    """CI privacy checks: ε re-derived from events, no seeded noise in releases, policy, ledger,
    and (with --verify-key) every file signed by that key."""
    from privrec.risk import CheckConfig, load_check_config, run_check

    with handle_errors():
        _check_outputs(
            [json_out], [config, *(artifacts or []), *(release or [])]
        )  # before any check
        cfg = load_check_config(config) if config is not None else CheckConfig()
        update: dict[str, object] = {}
        if artifacts:
            update["artifacts"] = [*cfg.artifacts, *map(str, artifacts)]
        if release:
            update["release"] = [*cfg.release, *map(str, release)]
        if verify_key is not None:
            update["signing"] = cfg.signing.model_copy(update={"verify_key": str(verify_key)})
        if max_epsilon is not None:
            update["policy"] = cfg.policy.model_copy(update={"max_epsilon": max_epsilon})
        if db is not None or key is not None or expect_head is not None:
            update["ledger"] = cfg.ledger.model_copy(
                update={
                    k: v
                    for k, v in (("url", db), ("api_key", key), ("expect_head", expect_head))
                    if v is not None
                }
            )
        rep = run_check(cfg.model_copy(update=update))
        for f in rep.findings:
            if verbose or f.level == "violation":
                console.print(f.line(), highlight=False, markup=False)
        for gap in rep.gaps:
            err_console.print(f"note: {gap}", highlight=False, markup=False)
        if json_out is not None:
            import json

            _write_all([(json_out, json.dumps(rep.to_dict(), indent=2) + "\n")])
        n = len(rep.findings)
        console.print(
            f"{n - len(rep.violations)}/{n} checks passed"
            + (f", {len(rep.violations)} violation(s)" if rep.violations else ""),
            highlight=False,
        )
    if not rep.passed:
        raise typer.Exit(1)
