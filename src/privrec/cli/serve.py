"""``privrec serve``: the recommendation service, DP query API and dashboard (needs ``[serve]``)."""

from __future__ import annotations

import ipaddress
import os
import warnings
from pathlib import Path
from typing import Annotated, cast

import typer

from privrec.cli.common import VerifyKeyOpt, console, handle_errors


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxies(values: list[str]) -> list[str]:
    """The trusted proxies as canonical addresses / networks; anything else is refused.

    ``*`` is refused, and so is any set of networks that together hold every IPv4 or every IPv6
    address (``0.0.0.0/0``, ``0.0.0.0/1`` with ``128.0.0.0/1``, ``::ffff:0:0/96`` …): trusting
    every peer's X-Forwarded-For lets any client choose the address its failed sign-ins are
    charged to, which defeats the per-address budget. An IPv4 proxy is also trusted in its
    IPv4-mapped IPv6 form (``::ffff:10.0.0.5``), as a dual-stack socket reports it (and a
    mapped one in its IPv4 form).
    """
    from privrec.errors import PrivacyWarning, ServeConfigError

    out: list[str] = []
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for raw in values:
        value = raw.strip()
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ServeConfigError(
                f"--trusted-proxy expects an IP address or network (CIDR), found {raw!r}"
            ) from None
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [net]
        if isinstance(net, ipaddress.IPv4Network):  # and as a dual-stack socket reports it
            mapped = ipaddress.IPv6Address(f"::ffff:{net.network_address}")
            nets.append(ipaddress.IPv6Network((int(mapped), 96 + net.prefixlen)))
        else:  # an IPv4-mapped network is those IPv4 addresses too (and ::/8 holds them all)
            v4_of = _mapped_v4(net)
            if v4_of is not None:
                nets.append(v4_of)
        for n in nets:
            if isinstance(n, ipaddress.IPv4Network):
                v4.append(n)
            else:
                v6.append(n)
            single = n.prefixlen == n.max_prefixlen
            addr = n.network_address
            v4_in = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
            text = str(addr) if v4_in is None else f"::ffff:{v4_in}"  # dotted, as people write it
            text = text if single else f"{text}/{n.prefixlen}"
            if text not in out:
                out.append(text)
    merged = cast(
        "list[ipaddress.IPv4Network | ipaddress.IPv6Network]",
        [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)],
    )
    if any(n.prefixlen == 0 for n in merged):
        raise ServeConfigError(
            f"--trusted-proxy {' '.join(values)!r} trusts every address (all of IPv4 or of "
            "IPv6, IPv4-mapped addresses included): any client could then choose the address "
            "its failed sign-ins are charged to; name the proxy's address or network"
        )
    broad = [
        str(n)
        for n in merged
        if n.prefixlen < (_BROADEST_V4 if n.version == 4 else _BROADEST_V6)
        and not (n.version == 6 and n.subnet_of(_MAPPED))  # an IPv4 network's mapped twin
    ]
    if broad:
        warnings.warn(
            f"--trusted-proxy trusts {', '.join(broad)}: every client in there may choose the "
            "address its failed sign-ins are charged to — name the proxies, not whole networks "
            "of clients",
            PrivacyWarning,
            stacklevel=2,
        )
    return out


def _mapped_v4(net: ipaddress.IPv6Network) -> ipaddress.IPv4Network | None:
    """The IPv4 network an IPv4-mapped IPv6 network (inside ``::ffff:0:0/96``) stands for."""
    if net.prefixlen < 96 or net.network_address.ipv4_mapped is None:
        return None if not net.overlaps(_MAPPED) else ipaddress.IPv4Network("0.0.0.0/0")
    return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
#: networks broader than these (a /8 of IPv4, a /32 of IPv6: a whole provider) warn
_BROADEST_V4, _BROADEST_V6 = 8, 32


def _check_ledger(db: str | None) -> None:
    """Refuse to start on a ledger that is missing, unreadable or not privrec's.

    The service opens the ledger per request: on a mistyped ``--db`` it would start and then
    answer every keyed request 503 ``ledger_unavailable``. Checked read-only
    (:func:`~privrec.governance.db.check_ledger`): no SQLite file is created.
    """
    from privrec.errors import LedgerSchemaError, ServeConfigError
    from privrec.governance.db import check_ledger

    try:
        check_ledger(db)
    except LedgerSchemaError as exc:
        raise ServeConfigError(
            f"--db: {exc}; the service would refuse every request that needs a key"
        ) from None


def serve(
    db: Annotated[
        str | None,
        typer.Option(
            "--db", envvar="PRIVREC_DB", help="Ledger URL (default sqlite:///privrec.db)."
        ),
    ] = None,
    models: Annotated[
        Path, typer.Option("--models", help="Directory of model files (*.npz) to serve.")
    ] = Path("models"),
    datasets: Annotated[
        Path | None,
        typer.Option("--datasets", help="TOML file naming the datasets open to DP queries."),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", help="NAME=FILE: a dataset open to DP queries (repeatable)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    rate_limit: Annotated[
        float, typer.Option(help="Requests per second per API key (0: no limit).")
    ] = 50.0,
    burst: Annotated[int, typer.Option(help="Burst allowed above the rate.")] = 100,
    key_ttl: Annotated[
        float, typer.Option(help="Seconds a verified key is reused for reads.")
    ] = 5.0,
    allow_non_private: Annotated[
        bool, typer.Option(help="Also serve models without a DP guarantee (warns).")
    ] = False,
    log_level: Annotated[
        str, typer.Option(help="Log level (the log never holds requests).")
    ] = "info",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes (each loads the models; rate limits and key caches are per "
            "process).",
        ),
    ] = 1,
    verify_key: VerifyKeyOpt = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-proxy",
            help="Address or network (CIDR) of a reverse proxy whose X-Forwarded-For names the "
            "client (repeatable): per-address sign-in budgets then see the clients, not the proxy.",
        ),
    ] = None,
) -> None:
    """Serve recommendations, DP analytics queries and the privacy dashboard.

    Recommendations are folded in from the user's own history and nothing of a request is kept;
    every DP query is charged to the analyst's budget in the ledger before its answer leaves.
    Open http://HOST:PORT/dashboard/ and sign in with an API key (`privrec keys create`).
    With --verify-key, every model file must be signed by that key: one that is not stops the
    start; one added or replaced later is refused and the model served before stays.
    """
    with handle_errors():
        try:
            import uvicorn

            from privrec.serve.app import (
                SETTINGS_ENV,
                ServeSettings,
                configure_log,
                create_app,
            )
            from privrec.serve.datasets import load_dataset_specs
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise typer.BadParameter(
                f"privrec serve needs the [serve] extra (pip install 'privrec[serve]'): {exc}"
            ) from None
        from privrec.errors import PrivacyWarning, ServeConfigError
        from privrec.governance.db import resolve_url

        pairs = {}
        for item in data or []:
            if "=" not in item:
                raise ServeConfigError(f"--data expects NAME=FILE, found {item!r}")
            name, file = item.split("=", 1)
            pairs[name.strip()] = file.strip()
        if not _loopback(host):
            warnings.warn(
                f"binding to {host}: the service is reachable from other machines; put it behind "
                "TLS (API keys travel in headers)",
                PrivacyWarning,
                stacklevel=1,
            )
        proxies = _proxies(trusted_proxy or [])
        _check_ledger(db)
        settings = ServeSettings(
            db_url=resolve_url(db),
            models_dir=models,
            datasets=load_dataset_specs(datasets, pairs),
            rate_limit=rate_limit,
            burst=burst,
            key_ttl=key_ttl,
            allow_non_private=allow_non_private,
            verify_key=verify_key,
        )
        app = create_app(settings)  # also checks the settings before any worker starts
        configure_log(log_level)
        console.print(
            f"privrec serve on http://{host}:{port}/  (dashboard /dashboard/, API /v1, "
            f"OpenAPI /v1/openapi.json); {len(app.state.ctx.models.list())} models, "
            f"{len(settings.datasets)} datasets"
            + (f"; only files signed by {app.state.ctx.models.signer}" if verify_key else "")
            + (
                f"; {workers} worker processes (rate limits and key caches per process)"
                if workers > 1
                else ""
            )
        )
        if workers > 1:
            del app  # each worker builds its own from the settings
            os.environ[SETTINGS_ENV] = settings.to_json(log_level)
        uvicorn.run(
            app if workers == 1 else "privrec.serve.app:app_from_environment",
            factory=workers > 1,
            workers=workers if workers > 1 else None,
            host=host,
            port=port,
            access_log=False,  # uvicorn's access log names client addresses; ours does not
            # the client address only feeds the in-memory sign-in budget (never kept or logged);
            # X-Forwarded-For is believed only from the proxies named on the command line
            proxy_headers=bool(proxies),
            forwarded_allow_ips=proxies or None,
            log_level=log_level,
            server_header=False,
            ws="none",
        )
