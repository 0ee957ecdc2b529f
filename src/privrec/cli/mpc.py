"""``privrec mpc …``: secure top-k with three MPyC parties."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from privrec.cli.common import console, handle_errors, user_history
from privrec.errors import ConfigError

# ------------------------------------------------------- mpc: secure top-k (MPyC)
mpc_app = typer.Typer(
    help="Secure top-k with three MPyC parties (needs the \\[mpc] extra; see docs/secure_scoring.md).",
    no_args_is_help=True,
)
_UserBoundOpt = Annotated[
    float, typer.Option("--user-norm-bound", help="Public bound on the user vector's L2 norm.")
]


@mpc_app.command("topk")
def mpc_topk(
    model_path: Annotated[Path, typer.Argument(help="A factor model saved by `privrec train`.")],
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", help="External user id (history read from the model file)."),
    ] = None,
    history: Annotated[
        Path | None,
        typer.Option(
            "--history",
            help="The user's history: external item ids, one per line (private models, "
            "which keep no users).",
        ),
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1)] = 10,
    public_items: Annotated[
        bool,
        typer.Option(
            "--public-items/--secret-items",
            help="Item factors known to all parties (released model) or input by party 1 only.",
        ),
    ] = True,
    user_norm_bound: _UserBoundOpt = 4.0,
    item_norm_bound: Annotated[
        float | None,
        typer.Option(help="Public bound on item-row norms (default: from the model's factors)."),
    ] = None,
    tls: Annotated[
        bool, typer.Option("--tls", help="Mutually authenticated TLS between the parties.")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for the whole run.")] = 300.0,
) -> None:
    """Top-k for one user by three local MPyC processes on 127.0.0.1.

    Party 0 (the client) folds the user in and inputs u and its seen items, party 1 the
    item factors; only party 0 learns the top-k ids (no scores).
    """
    from privrec.models import load_model
    from privrec.secure.mpc import MPCParams
    from privrec.secure.mpc_local import secure_recommend

    with handle_errors():
        model = load_model(model_path)
        if not hasattr(model, "item_factors_"):
            raise ConfigError(f"{type(model).__name__} is not a factor model (no item factors)")
        row, who = user_history(model, model_path, user, history)
        if item_norm_bound is None:
            item_norm_bound = float(np.linalg.norm(model.item_factors_, axis=1).max()) * 1.01
        params = MPCParams(user_norm_bound=user_norm_bound, item_norm_bound=item_norm_bound)
        res = secure_recommend(
            model, row, k=k, public_items=public_items, params=params, tls=tls, timeout=timeout
        )
        console.print(f"secure top-{k} for {who} (ids only, no scores):")
        table = Table("rank", "item")
        for rank, item in enumerate(res.items, start=1):
            if item >= 0:
                table.add_row(str(rank), str(model.item_ids_[item]))
        console.print(table)
        console.print(
            f"3 parties (MPyC, threshold 1), item factors {'public' if public_items else 'secret'}; "
            f"bytes sent {res.total_bytes:,} ({', '.join(f'{b:,}' for b in res.bytes_sent)}); "
            f"protocol {res.seconds:.2f} s, wall {res.wall_seconds:.2f} s"
        )


@mpc_app.command("keys")
def mpc_keys(
    out: Annotated[Path, typer.Argument(help="Folder for ca.pem and party-<i>.pem/.key.")],
) -> None:
    """Create a CA and TLS certificates for the three parties of `privrec mpc party`."""
    from privrec.secure.mpc import make_tls_material

    with handle_errors():
        make_tls_material(out)
        console.print(
            f"wrote {out}/ca.pem and party-0/1/2.pem/.key: give each party ca.pem and its own "
            "pair; keep ca.key offline"
        )


@mpc_app.command("party")
def mpc_party(
    party_id: Annotated[int, typer.Option("--id", help="0 client, 1 model holder, 2 helper.")],
    parties: Annotated[
        list[str], typer.Option("--party", help="host:port of parties 0, 1, 2 (repeat 3 times).")
    ],
    n_items: Annotated[int, typer.Option("--n-items", help="Catalogue size (public).")],
    factors: Annotated[int, typer.Option("--factors", help="Factors per item (public).")],
    k: Annotated[int, typer.Option("--k", "-k")] = 10,
    user_vector: Annotated[
        Path | None, typer.Option("--user-vector", help="Party 0: the user's factors (.npy).")
    ] = None,
    exclude: Annotated[
        Path | None, typer.Option("--exclude", help="Party 0: item indices to leave out (.npy).")
    ] = None,
    item_factors: Annotated[
        Path | None,
        typer.Option("--item-factors", help="Party 1 (or all with --public-items): Y (.npy)."),
    ] = None,
    public_items: Annotated[
        bool, typer.Option("--public-items", help="Every party holds the same public Y.")
    ] = False,
    user_norm_bound: _UserBoundOpt = 4.0,
    item_norm_bound: Annotated[float, typer.Option(help="Public bound on item-row norms.")] = 4.0,
    bind: Annotated[
        str | None, typer.Option("--bind", help="Interface to listen on (default: own host).")
    ] = None,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            "--tls-dir",
            help="Folder with ca.pem and this party's party-<id>.pem/.key (`privrec mpc keys`).",
        ),
    ] = None,
    items: Annotated[
        Path | None,
        typer.Option(
            "--items",
            help="Party 0: the catalogue's external ids (items.txt of `mpc export`), to print "
            "them instead of indices.",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout")] = 300.0,
) -> None:
    """Run one party of secure top-k; every party must get the same public options."""
    from privrec.secure.mpc import MPCParams, TLSFiles, run_party

    with handle_errors():
        addrs = []
        for item in parties:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"--party must be host:port, found {item!r}")
            addrs.append((host, int(port)))
        res = run_party(
            party_id,
            addrs,
            n_items=n_items,
            n_factors=factors,
            k=k,
            user_vector=None if user_vector is None else np.load(user_vector),
            exclude=None if exclude is None else np.load(exclude),
            item_factors=None if item_factors is None else np.load(item_factors),
            public_items=public_items,
            params=MPCParams(user_norm_bound=user_norm_bound, item_norm_bound=item_norm_bound),
            bind_host=bind,
            tls=None if tls_dir is None else TLSFiles.in_dir(tls_dir, party_id),
            timeout=timeout,
        )
        if res.items is not None:
            ids = None
            if items is not None:
                from privrec.secure.silo_model import read_catalogue

                ids = read_catalogue(items)
                if len(ids) != n_items:
                    raise ConfigError(f"--items lists {len(ids)} items, --n-items is {n_items}")
            shown = [  # -1 pads a list longer than the items left, as Recommender.recommend
                str(ids[i]) if ids is not None and i >= 0 else str(i) for i in res.items.tolist()
            ]
            console.print("top-k items: " + " ".join(shown))
        else:
            console.print(f"party {party_id} done (receives no output)")
        console.print(f"bytes sent {res.bytes_sent:,}; protocol {res.seconds:.2f} s")


@mpc_app.command("export")
def mpc_export(
    model_path: Annotated[Path, typer.Argument(help="A factor model saved by `privrec train`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the parties' input files.")],
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="External user id (non-private model).")
    ] = None,
    history: Annotated[
        Path | None,
        typer.Option("--history", help="The user's items: external ids, one per line."),
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1)] = 10,
    public_items: Annotated[
        bool,
        typer.Option(
            "--public-items/--secret-items",
            help="Item factors known to all parties (released model) or input by party 1 only.",
        ),
    ] = True,
    user_norm_bound: _UserBoundOpt = 4.0,
    item_norm_bound: Annotated[
        float | None,
        typer.Option(help="Public bound on item-row norms (default: from the model's factors)."),
    ] = None,
) -> None:
    """Write each party's input files for `privrec mpc party` on separate machines.

    party-0/ (the user's folded-in vector and the items to leave out: secret, mode 0600) goes
    to the client only, party-1/ (or public/) to the model holder (or everyone); items.txt and
    public.json are public. Prints the three `mpc party` commands.
    """
    from privrec.models import load_model
    from privrec.secure.mpc import MPCParams
    from privrec.secure.mpc_local import export_party_inputs

    with handle_errors():
        model = load_model(model_path)
        if not hasattr(model, "item_factors_"):
            raise ConfigError(f"{type(model).__name__} is not a factor model (no item factors)")
        row, who = user_history(model, model_path, user, history)
        if item_norm_bound is None:
            item_norm_bound = float(np.linalg.norm(model.item_factors_, axis=1).max()) * 1.01
        params = MPCParams(user_norm_bound=user_norm_bound, item_norm_bound=item_norm_bound)
        pub = export_party_inputs(model, row, out, k=k, public_items=public_items, params=params)
        y = "public" if public_items else "party-1"
        common = (
            f"--n-items {pub['n_items']} --factors {pub['factors']} --k {pub['k']} "
            f"--user-norm-bound {pub['user_norm_bound']:g} "
            f"--item-norm-bound {pub['item_norm_bound']:.6g}"
            + (" --public-items" if public_items else "")
            + " --party HOST0:PORT --party HOST1:PORT --party HOST2:PORT"
        )
        console.print(f"wrote the inputs of {who} to {out}/ (party-0/ is secret: client only)")
        for pid, extra in (
            (
                0,
                f"--user-vector {out}/party-0/user-vector.npy --exclude {out}/party-0/exclude.npy"
                f" --items {out}/items.txt"
                + (f" --item-factors {out}/{y}/item-factors.npy" if public_items else ""),
            ),
            (1, f"--item-factors {out}/{y}/item-factors.npy"),
            (2, f"--item-factors {out}/{y}/item-factors.npy" if public_items else ""),
        ):
            console.print(
                f"privrec mpc party --id {pid} {common} {extra}".rstrip(),
                highlight=False,
                soft_wrap=True,
            )
