"""``privrec ledger | keys | policy | consent | forget | lineage | audit-log``: privacy operations.

Every command acts as the principal whose API key is given with ``--key`` (or
``$PRIVREC_API_KEY``) on the ledger at ``--db`` (or ``$PRIVREC_DB``, default
``sqlite:///privrec.db``); the library enforces the role, so a command the role does not allow
fails with one line and writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from privrec.cli.common import console, err_console, handle_errors, load_data

ledger_app = typer.Typer(
    help="The privacy budget ledger: initialise, budgets, status, history.", no_args_is_help=True
)
keys_app = typer.Typer(help="API keys and roles (owner, analyst, auditor).", no_args_is_help=True)
policy_app = typer.Typer(help="Data-use policies (TOML).", no_args_is_help=True)
consent_app = typer.Typer(help="Consent records.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)

DbOpt = Annotated[
    str | None,
    typer.Option("--db", envvar="PRIVREC_DB", help="Ledger URL (default sqlite:///privrec.db)."),
]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="PRIVREC_API_KEY", help="Your API key.", show_default=False),
]
DatasetOpt = Annotated[str, typer.Option("--dataset", help="Dataset name in the ledger.")]


def _connect(db: str | None, key: str | None) -> Any:
    from privrec.governance import Ledger

    return Ledger.connect(db, key)


def _eps(x: float) -> str:
    return "∞" if x == float("inf") else f"{x:.4g}"


def _when(t: float | None) -> str:
    from privrec.governance.records import fmt_time

    return fmt_time(t)


# ------------------------------------------------------------------------------------ ledger
@ledger_app.command("init")
def ledger_init(
    db: DbOpt = None,
    owner: Annotated[str, typer.Option(help="Name of the first owner.")] = "owner",
) -> None:
    """Create the ledger (schema via Alembic) and its first owner; prints the owner's key once.

    On a ledger written by an older privrec, migrates its schema to this privrec's (keys,
    charges and the audit log are kept) and says so.
    """
    from privrec.errors import GovernanceError, LedgerSchemaError
    from privrec.governance import Ledger
    from privrec.governance.db import (
        HEAD_REVISION,
        create_ledger_engine,
        create_private_sqlite_file,
        resolve_url,
        schema_revision,
    )

    with handle_errors():
        create_private_sqlite_file(resolve_url(db))  # before SQLite creates it world-readable
        with create_ledger_engine(resolve_url(db)).connect() as conn:
            before = schema_revision(conn)
        try:
            _, key = Ledger.init(db, owner=owner)
        except GovernanceError as exc:
            # a schema the library refused (wound back, damaged) is not "already initialised"
            if before is None or before == HEAD_REVISION or isinstance(exc, LedgerSchemaError):
                raise
            console.print(
                f"ledger migrated from schema {before} to {HEAD_REVISION} "
                "(already initialised: no new owner, existing keys keep working)"
            )
            return
        console.print(f"ledger initialised at {resolve_url(db)}; owner [bold]{owner}[/]")
        console.print("owner API key (shown once, stored only as a scrypt hash):")
        console.print(key, highlight=False, soft_wrap=True)


@ledger_app.command("status")
def ledger_status(
    db: DbOpt = None,
    key: KeyOpt = None,
    dataset: Annotated[str | None, typer.Option("--dataset")] = None,
) -> None:
    """Budgets with spent ε (dp-accounting composition) beside the naive sum, and retrains due."""
    with handle_errors():
        ledger = _connect(db, key)
        table = Table(title="privacy budgets: spent ε is composed (dp-accounting), never summed")
        for col in ("dataset", "scope", "cap (ε, δ)", "spent ε", "naive Σε", "left ε", "charges"):
            table.add_column(col, justify="left" if col in ("dataset", "scope") else "right")
        for s in ledger.status(dataset):
            period = "" if s.period_days is None else f" per {s.period_days:g} d"
            table.add_row(
                s.dataset,
                s.label,
                f"{_eps(s.epsilon)}, {s.delta:.0e}{period}",
                _eps(s.composed_epsilon),
                _eps(s.naive_epsilon),
                _eps(s.remaining),
                f"{s.committed} done, {s.reserved} open"
                + (f", {s.aborted} aborted" if s.aborted else ""),
            )
        console.print(table)
        if ledger.principal.can("read_all"):
            due = ledger.retrains_due(dataset)
            for d in due:
                console.print(
                    f"[yellow]retrain due[/] by {_when(d.retrain_due)}: artifact {d.artifact.id} "
                    f"({d.artifact.model_kind}, {d.artifact.dataset}) was trained on data holding a "
                    f"person who has since {d.reason}"
                )


@ledger_app.command("history")
def ledger_history(
    db: DbOpt = None,
    key: KeyOpt = None,
    dataset: Annotated[str | None, typer.Option("--dataset")] = None,
    limit: Annotated[int, typer.Option(help="Most recent charges shown.")] = 30,
    actor: Annotated[str | None, typer.Option(help="Only this analyst's charges.")] = None,
) -> None:
    """Charges, newest first: who spent what, why, when, and what was released."""
    with handle_errors():
        ledger = _connect(db, key)
        table = Table(title="charges, newest first (ε alone at the dataset's δ)")
        for col in ("id", "time (UTC)", "dataset", "actor", "purpose", "what", "ε", "status"):
            table.add_column(col, justify="right" if col in ("id", "ε") else "left")
        for c in ledger.history(dataset, limit=limit, actor=actor):
            status = c.status if c.artifact_id is None else f"{c.status} → artifact {c.artifact_id}"
            table.add_row(
                str(c.id),
                _when(c.created_at)[5:16],
                c.dataset,
                c.actor,
                c.purpose,
                c.description or f"{c.kind}, {len(c.events)} event(s)",
                _eps(c.epsilon),
                status + (f" ({c.note})" if c.note else ""),
            )
        console.print(table)


@ledger_app.command("abort")
def ledger_abort(
    charge: Annotated[
        int, typer.Argument(help="The id of your reserved charge (`ledger history`).")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why nothing was released (logged).")],
    db: DbOpt = None,
    key: KeyOpt = None,
) -> None:
    """Abort a reserved charge whose output was never released (analysts: their own; owners:
    any analyst's, e.g. one left by a revoked key).

    A reserved charge holds its ε in every window of a rolling budget until it is committed or
    aborted (it might still be released); a computation that died before releasing anything
    leaves one behind. One whose output was released cannot be aborted.
    """
    with handle_errors():
        ledger = _connect(db, key)
        c = ledger.abort(charge, reason=reason)
        console.print(f"charge {c.id} aborted: its ε ({_eps(c.epsilon)}) is no longer counted")


@ledger_app.command("budget")
def ledger_budget(
    dataset: Annotated[str, typer.Argument(help="Dataset name.")],
    db: DbOpt = None,
    key: KeyOpt = None,
    epsilon: Annotated[float | None, typer.Option(help="Cap ε (omit to show).")] = None,
    delta: Annotated[float | None, typer.Option(help="Cap δ.")] = None,
    analyst: Annotated[str | None, typer.Option(help="Scope: this analyst.")] = None,
    purpose: Annotated[str | None, typer.Option(help="Scope: this purpose.")] = None,
    period_days: Annotated[
        float | None, typer.Option(help="Rolling period (default: lifetime).")
    ] = None,
    accountant: Annotated[str, typer.Option(help="pld or rdp.")] = "pld",
) -> None:
    """Set a budget (owner) for the dataset, an analyst or a purpose, or show the dataset's budgets."""
    from privrec.errors import GovernanceError

    with handle_errors():
        ledger = _connect(db, key)
        if epsilon is None and delta is None:
            ledger_status(db=db, key=key, dataset=dataset)
            return
        if epsilon is None or delta is None:
            raise GovernanceError("give both --epsilon and --delta to set a budget")
        if analyst is not None and purpose is not None:
            raise GovernanceError("a budget is for an analyst or a purpose, not both")
        for name, given in (("--analyst", analyst), ("--purpose", purpose)):
            if given is not None and not given.strip():  # '' must not mean the dataset's cap
                raise GovernanceError(
                    f"{name} needs a name (leave it out for the dataset's budget)"
                )
        scope = (
            "analyst" if analyst is not None else "purpose" if purpose is not None else "dataset"
        )
        s = ledger.set_budget(
            dataset,
            epsilon=epsilon,
            delta=delta,
            scope=scope,
            value=analyst or purpose or "",
            period_days=period_days,
            accountant=accountant,
        )
        console.print(
            f"budget set: {dataset} / {s.label}: ε ≤ {s.epsilon:g} at δ = {s.delta:g} "
            f"({'lifetime' if s.period_days is None else f'per {s.period_days:g} days'}); "
            f"spent {_eps(s.composed_epsilon)}, remaining {_eps(s.remaining)}"
        )
        if s.composed_epsilon > s.epsilon:
            err_console.print(
                f"[bold yellow]warning:[/] ε {_eps(s.composed_epsilon)} is already spent in this "
                f"scope, above the new cap {s.epsilon:g}: every further charge is refused, and "
                "`privrec check --db` reports the scope as over its cap",
                highlight=False,
            )


# ------------------------------------------------------------------------------------ keys
@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Principal (person or service) name.")],
    role: Annotated[str | None, typer.Option(help="owner, analyst or auditor (new names).")] = None,
    db: DbOpt = None,
    key: KeyOpt = None,
) -> None:
    """Create an API key (owner); prints it once."""
    with handle_errors():
        new = _connect(db, key).create_key(name, role)
        console.print(f"API key for [bold]{name}[/] (shown once):")
        console.print(new, highlight=False, soft_wrap=True)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (the part after 'prk_').")],
    db: DbOpt = None,
    key: KeyOpt = None,
) -> None:
    """Revoke an API key (owner)."""
    with handle_errors():
        _connect(db, key).revoke_key(key_id)
        console.print(f"key {key_id} revoked")


@keys_app.command("list")
def keys_list(db: DbOpt = None, key: KeyOpt = None) -> None:
    """Every key's id, holder, role and state (owner, auditor); never secrets."""
    with handle_errors():
        table = Table("key id", "principal", "role", "created (UTC)", "revoked")
        for k in _connect(db, key).keys():  # noqa: SIM118 (a method, not a dict)
            table.add_row(k["key_id"], k["name"], k["role"], _when(k["created_at"]),
                          _when(k["revoked_at"]))  # fmt: skip
        console.print(table)


# ------------------------------------------------------------------------------------ policy
def _report_table(report: Any) -> Table:
    table = Table("step", "why", "users dropped", "interactions dropped",
                  title="policy applied (counts only)")  # fmt: skip
    for s in report.steps:
        table.add_row(s.step, s.reason, f"{s.users_dropped:,}", f"{s.interactions_dropped:,}")
    table.add_row("kept", "", f"{report.users_out:,} of {report.users_in:,}",
                  f"{report.interactions_out:,} of {report.interactions_in:,}")  # fmt: skip
    return table


@policy_app.command("check")
def policy_check(
    policy_file: Annotated[Path, typer.Argument(help="Policy TOML file.")],
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Try it on this file.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f")] = None,
) -> None:
    """Validate a policy; with --data, show what it would drop (counts only). Writes nothing."""
    import time

    import numpy as np

    from privrec.governance.db import user_digests
    from privrec.governance.policy import apply_policy, load_policy

    with handle_errors():
        policy = load_policy(policy_file)
        b = policy.budget
        console.print(
            f"policy OK: purpose {policy.purpose!r}, unit {policy.unit.value}, columns "
            f"{', '.join(policy.columns)}, retention "
            f"{'none' if policy.retention_days is None else f'{policy.retention_days:g} days'}, "
            f"at most {policy.max_interactions_per_user or '∞'} interactions per user, consent "
            f"{'required (' + policy.consent.source + ')' if policy.consent.required else 'not required'}, "
            f"budget ε ≤ {b.epsilon:g} at δ = {b.delta:g} ({b.accountant})",
            highlight=False,
        )
        if data is None:
            return
        x = load_data(data, fmt)
        key = b"policy-check"
        consented = None
        if policy.consent.required and policy.consent.source == "ledger":
            console.print(
                "consents live in the ledger: this dry run treats everyone as not consented"
            )
            consented = np.zeros(0, dtype=np.uint64)
        elif policy.consent.required:
            from privrec.governance.policy import read_consents

            granted = dict(read_consents(policy.consent.source))
            consented = user_digests(key, [u for u, g in granted.items() if g])
        _, report = apply_policy(
            x,
            policy,
            user_digests=user_digests(key, x.user_ids),
            deleted=np.zeros(0, dtype=np.uint64),
            consented=consented,
            now=time.time(),
        )
        console.print(_report_table(report))
        if report.users_out == 0 and report.users_in > 0:
            # e.g. a retention window older than every timestamp: nothing would ever be trained
            err_console.print(
                "[bold yellow]warning:[/] this policy keeps no user of this file — see the steps "
                "above (retention against the file's timestamps? consent?)",
                highlight=False,
            )


@policy_app.command("set")
def policy_set(
    policy_file: Annotated[Path, typer.Argument(help="Policy TOML file.")],
    dataset: DatasetOpt,
    db: DbOpt = None,
    key: KeyOpt = None,
) -> None:
    """Register a dataset under a policy, or replace its policy (owner); sets the dataset budget."""
    import warnings

    from privrec.errors import PrivacyWarning
    from privrec.governance.policy import load_policy

    with handle_errors():
        with warnings.catch_warnings():  # set_policy warns about a weak cap, knowing the data
            warnings.simplefilter("ignore", PrivacyWarning)
            policy = load_policy(policy_file)
        info = _connect(db, key).set_policy(dataset, policy)
        console.print(
            f"dataset {info.name!r}: policy {info.policy_hash[:12]}… in force (unit {info.unit})"
        )


# ------------------------------------------------------------------------------------ consent
@consent_app.command("import")
def consent_import(
    csv_file: Annotated[Path, typer.Argument(help="CSV with columns user, consent.")],
    dataset: DatasetOpt,
    db: DbOpt = None,
    key: KeyOpt = None,
) -> None:
    """Import consent records (owner); later records for a user win."""
    from privrec.governance.policy import read_consents

    with handle_errors():
        ledger = _connect(db, key)
        records = read_consents(csv_file)
        counts = ledger.import_consents(dataset, records, source=str(csv_file))
        console.print(
            f"{counts['records']:,} consent records imported into {dataset!r} "
            f"({counts['granted']:,} granted, {counts['revoked']:,} revoked)"
        )


# ------------------------------------------------------------------------------------ deletion, lineage
def forget(
    user: Annotated[str, typer.Argument(help="External user id.")],
    dataset: DatasetOpt,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "",
    db: DbOpt = None,
    key: KeyOpt = None,
) -> None:
    """Record a deletion request (owner): every later training on the dataset excludes the user."""
    with handle_errors():
        rid = _connect(db, key).forget(dataset, user, reason=reason)
        console.print(
            f"deletion request {rid} recorded for dataset {dataset!r}: later loads drop this user; "
            "`privrec lineage --user` lists models trained before"
        )


def lineage(
    artifact: Annotated[
        str | None, typer.Argument(help="Artifact id, file hash or model file.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="External user id.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset")] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="With --user: one JSON object per artifact instead.")
    ] = False,
    db: DbOpt = None,
    key: KeyOpt = None,
) -> None:
    """Where an artifact came from, or which artifacts were trained on data holding a user."""
    from privrec.errors import GovernanceError

    with handle_errors():
        ledger = _connect(db, key)
        if (artifact is None) == (user is None):
            raise GovernanceError("give an ARTIFACT or --user USER")
        if user is not None and json_out:  # a narrow terminal or a pipe cuts the table's cells
            for x in ledger.lineage_of_user(user, dataset):
                a = x.artifact
                print(json.dumps({
                    "artifact": a.id, "dataset": a.dataset, "version": x.version_id,
                    "model": a.model_kind, "trained_at": a.created_at, "signer": a.signer,
                    "deletion_requested_at": x.deletion_requested_at,
                    "consent_withdrawn_at": x.consent_withdrawn_at,
                    "retrain_due": x.retrain_due, "reason": x.reason or None,
                }))  # fmt: skip
            return
        if user is not None:
            table = Table("artifact", "dataset", "version", "model", "trained (UTC)", "signed by", "deletion requested",
                          "trained before deletion", "consent withdrawn", "retrain due",
                          title=f"artifacts trained on data holding user {user}")  # fmt: skip
            for x in ledger.lineage_of_user(user, dataset):
                a = x.artifact
                table.add_row(str(a.id), a.dataset, str(x.version_id), a.model_kind, _when(a.created_at),
                              a.signer or "unsigned", _when(x.deletion_requested_at),
                              "yes" if x.trained_before_deletion else "no", _when(x.consent_withdrawn_at),
                              _when(x.retrain_due))  # fmt: skip
            console.print(table)
            return
        assert artifact is not None
        a = ledger.artifact(artifact)
        v = ledger.version(a.version_id) if a.version_id is not None else None
        g = a.guarantee
        rows = [
            ("artifact", f"{a.id}: {a.path}"),
            ("file sha256", a.file_hash),
            ("model", f"{a.model_kind} — {g.get('mechanism', '')}"),
            ("guarantee", f"({_eps(g.get('epsilon', float('nan')))}, {g.get('delta', 0):.1e})-DP per {g.get('unit')}"
             + ("  [red]SEEDED NOISE: NOT PRIVATE[/]" if a.seeded_noise else "")),
            ("signed by", a.signer or "unsigned"),
            ("charges", ", ".join(map(str, a.charge_ids)) or "-"),
            ("trained by", f"{a.created_by} at {_when(a.created_at)}"),
            ("privrec", f"{a.privrec_version} (git {a.git_commit or 'unknown'})"),
            ("dataset", a.dataset),
            ("dataset version", "-" if v is None else f"{v['id']} (content {v['content_hash'][:16]}…, "
             f"policy {v['policy_hash'][:12]}…, {v['n_users']:,} users, {v['nnz']:,} interactions)"),
            ("config", json.dumps(a.config, sort_keys=True)),
        ]  # fmt: skip
        table = Table("field", "value", title=f"lineage of artifact {a.id}", show_header=False)
        for k, val in rows:
            table.add_row(k, val)
        console.print(table)


# ------------------------------------------------------------------------------------ audit log
@audit_app.command("verify")
def audit_verify(
    db: DbOpt = None,
    key: KeyOpt = None,
    expect_head: Annotated[
        str | None, typer.Option(help="Head hash pinned elsewhere earlier (detects rewrites).")
    ] = None,
) -> None:
    """Check the hash chain and the tables against it; names the first bad row (owner, auditor)."""
    with handle_errors():
        v = _connect(db, key).verify_audit_log(expect_head=expect_head)
        if not v.ok:
            console.print(f"[bold red]FAILED[/]: {v.message}", highlight=False)
            raise typer.Exit(1)
        console.print(f"[bold green]OK[/]: {v.rows:,} rows; {v.message}", highlight=False)
        console.print(f"head {v.head_hash} (pin it elsewhere; pass it back with --expect-head)")


@audit_app.command("show")
def audit_show(
    db: DbOpt = None,
    key: KeyOpt = None,
    limit: Annotated[int, typer.Option(help="Most recent rows shown.")] = 20,
) -> None:
    """The most recent audit-log rows (owner, auditor)."""
    with handle_errors():
        table = Table("seq", "time (UTC)", "actor", "action", "hash")
        for r in _connect(db, key).audit_log(limit):
            table.add_row(
                str(r["seq"]), _when(r["at"]), r["actor"], r["action"], r["hash"][:16] + "…"
            )
        console.print(table)
