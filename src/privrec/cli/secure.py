"""``privrec he | silo | mpc``: private scoring, cross-silo training and secure top-k."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from privrec.cli.common import coerce_ids, console, handle_errors
from privrec.errors import ConfigError

# ------------------------------------------------------- he: private scoring
he_app = typer.Typer(
    help="Homomorphic private scoring (needs the \\[he] extra).", no_args_is_help=True
)


@he_app.command("score")
def he_score(
    model_path: Annotated[Path, typer.Argument(help="A factor model saved by `privrec train`.")],
    user: Annotated[
        str, typer.Option("--user", "-u", help="External user id (history read from the file).")
    ],
    k: Annotated[int, typer.Option("--k", "-k")] = 10,
    packing: Annotated[
        str, typer.Option(help="compact (smallest upload) or replicated (no rotation keys).")
    ] = "compact",
    noise_epsilon: Annotated[
        float | None, typer.Option(help="Add Gaussian noise to the scores: per-query ε.")
    ] = None,
    noise_delta: Annotated[float, typer.Option(help="Per-query δ of the score noise.")] = 1e-6,
    item_clip: Annotated[float, typer.Option(help="Clip norm of released item rows.")] = 1.0,
    user_clip: Annotated[float, typer.Option(help="Clip norm of the user vector.")] = 1.0,
) -> None:
    """Score one user privately: client and server in one process, CKKS in between.

    The client folds the user in from their history, encrypts the factors and
    keeps the secret key; the server sees only ciphertexts and the public
    context. Prints the top-k, the bytes each way and where the time went.
    """
    from privrec.errors import MissingUserDataError
    from privrec.models import load_model
    from privrec.secure.he import (
        HE_STANDARD_MAX_BITS,
        PrivateScoringClient,
        PrivateScoringServer,
        ScoreNoise,
    )

    with handle_errors():
        model = load_model(model_path)
        if getattr(model, "_released_only", False):
            raise MissingUserDataError(
                f"{model_path} holds only released parameters: no history for user {user!r}"
            )
        idx = model.user_index(coerce_ids([user], model.user_ids_))
        history = model.user_items_[idx]
        noise = (
            ScoreNoise(noise_epsilon, noise_delta, item_clip, user_clip)
            if noise_epsilon is not None
            else None
        )
        client = PrivateScoringClient(
            packing=packing, user_clip_norm=user_clip if noise is not None else None
        )
        server = PrivateScoringServer.from_model(model, params=client.params, noise=noise)
        prep_s = server.prepare(client.packing)
        request = client.encrypt_query(client.fold_in(model, history)).to_bytes()
        encrypt_s = client.last_timings["encrypt"]
        t0 = time.perf_counter()
        response = server.score(request).to_bytes()
        server_s = time.perf_counter() - t0
        seen = history.indices
        head = getattr(model, "head_items_", None)
        if head is not None:  # items a private model did not release are never recommended
            seen = np.union1d(seen, np.setdiff1d(np.arange(model.n_items_), head))
        items, scores = client.recommend(response, k=k, seen=seen)
        table = Table("rank", "item", "score", title=f"private top-{k} for user {user}")
        for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
            if item >= 0:
                table.add_row(str(rank), str(model.item_ids_[item]), f"{score:.4f}")
        console.print(table)
        p = client.params
        console.print(
            f"CKKS degree {p.poly_modulus_degree}, modulus {list(p.coeff_mod_bit_sizes)} "
            f"({p.total_bits} bits ≤ {HE_STANDARD_MAX_BITS[p.poly_modulus_degree]}, "
            "the 128-bit bound), "
            f"scale 2^{p.scale_bits}, packing {client.packing.value}"
        )
        console.print(
            f"bytes up {len(request):,} (public context {len(client.public_context):,}), "
            f"bytes down {len(response):,}"
        )
        console.print(
            f"timings: keygen {client.keygen_seconds:.3f} s, "
            f"encrypt {encrypt_s:.3f} s, server {server_s:.3f} s "
            f"(compute {server.last_timings.get('compute', 0.0):.3f} s; "
            f"one-off encoding {prep_s:.3f} s), "
            f"decrypt {client.last_timings.get('decrypt', 0.0):.3f} s"
        )
        if noise is not None:
            console.print(
                f"score noise: σ = {noise.sigma:.4g} per score, ({noise.epsilon:g}, "
                f"{noise.delta:g})-DP per query for one item row (clip {item_clip:g} × {user_clip:g})"
            )


# ------------------------------------------------------- silo: cross-silo DPALS
silo_app = typer.Typer(
    help="Cross-silo DPALS or DPEASE over two non-colluding aggregation servers (docs/cross_silo.md).",
    no_args_is_help=True,
)
_RosterOpt = Annotated[Path, typer.Option("--roster", help="roster.json from `privrec silo keys`.")]
_KeyOpt = Annotated[Path, typer.Option("--key", help="This party's <name>.key (secret).")]
_TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for any peer.")]


@silo_app.command("keys")
def silo_keys(
    out: Annotated[
        Path, typer.Argument(help="Directory for roster.json and the <name>.key files.")
    ],
    silos: Annotated[int, typer.Option("--silos", min=1, help="Number of silos K.")] = 3,
    host: Annotated[str, typer.Option("--host", help="Address the listening roles use.")] = (
        "127.0.0.1"
    ),
    ports: Annotated[
        str, typer.Option("--ports", help="Ports of driver,server0,server1 (comma-separated).")
    ] = "7100,7101,7102",
) -> None:
    """Create static X25519 keys and the public roster for driver, 2 servers and K silos."""
    from privrec.secure.silo import setup_keys

    with handle_errors():
        port_list = [int(p) for p in ports.split(",")]
        if len(port_list) != 3:
            raise ConfigError("--ports needs three ports: driver,server0,server1")
        roster, _ = setup_keys(out, silos, host=host, ports=port_list)
        console.print(
            f"wrote {out / 'roster.json'} (public) and {len(roster.parties)} key files "
            "(give each party only its own .key)"
        )


@silo_app.command("serve")
def silo_serve(
    roster: _RosterOpt,
    key: _KeyOpt,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The run's public config.json (written by `train` in its checkpoint "
            "directory): the server then refuses any step with less noise than it requires.",
        ),
    ] = None,
    timeout: _TimeoutOpt = 60.0,
) -> None:
    """Run an aggregation server for one training session."""
    from privrec.secure.channel import Identity, Roster
    from privrec.secure.silo import AggregationServer, load_config

    with handle_errors():
        cfg = None if config is None else load_config(config.read_text())
        AggregationServer(
            Identity.load(key), Roster.load(roster), timeout=timeout, config=cfg
        ).run()


@silo_app.command("join")
def silo_join(
    roster: _RosterOpt,
    key: _KeyOpt,
    data: Annotated[Path, typer.Option("--data", help="This silo's `user item item …` file.")],
    n_items: Annotated[int, typer.Option("--n-items", min=1, help="Shared catalogue size.")],
    timeout: _TimeoutOpt = 60.0,
) -> None:
    """Join a training session as a silo with its own users' data (item ids < n_items)."""
    import scipy.sparse as sp

    from privrec.data.loaders import read_user_item_lists
    from privrec.secure.channel import Identity, Roster
    from privrec.secure.silo import Silo

    with handle_errors():
        users, items, all_users = read_user_item_lists(data)
        if items.size and int(items.max()) >= n_items:
            raise ConfigError(f"{data}: item id {int(items.max())} ≥ --n-items {n_items}")
        rows = np.searchsorted(all_users, users)
        x = sp.csr_matrix(
            (np.ones(len(rows)), (rows, items)), shape=(len(all_users), n_items), dtype=np.float64
        )
        Silo(Identity.load(key), Roster.load(roster), x, timeout=timeout).run()


@silo_app.command("train")
def silo_train(
    roster: _RosterOpt,
    key: _KeyOpt,
    n_items: Annotated[
        int | None, typer.Option("--n-items", min=1, help="Shared catalogue size.")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option("--epsilon", help="User-level ε over the union.")
    ] = None,
    delta: Annotated[float, typer.Option("--delta")] = 1e-6,
    factors: Annotated[int, typer.Option("--factors")] = 32,
    iterations: Annotated[int | None, typer.Option("--iterations")] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="dpals (item factors) or dpease (EASE weights from a noisy Gram matrix).",
        ),
    ] = "dpals",
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="Directory written after every step.")
    ] = Path("silo-checkpoint"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --checkpoint.")] = False,
    out: Annotated[
        Path, typer.Option("--out", help="Released item factors (.npz) + guarantee (.json).")
    ] = Path("silo-model.npz"),
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A SiloConfig or SiloEASEConfig as JSON (the file the servers get); replaces "
            "--model, --n-items, --epsilon, --delta, --factors and --iterations.",
        ),
    ] = None,
    timeout: _TimeoutOpt = 60.0,
) -> None:
    """Drive cross-silo DPALS or DPEASE training (the driver holds no data)."""
    from privrec.secure.channel import Identity, Roster
    from privrec.secure.silo import (
        AnyConfig,
        SiloConfig,
        SiloEASEConfig,
        SiloResult,
        load_config,
        make_driver,
    )

    with handle_errors():
        config: AnyConfig
        if config_file is not None:
            config = load_config(config_file.read_text())
        elif n_items is None or epsilon is None:
            raise ConfigError("--n-items and --epsilon are required (or give --config)")
        elif model == "dpease":
            config = SiloEASEConfig(epsilon=epsilon, delta=delta, n_items=n_items)
        elif model == "dpals":
            config = SiloConfig(
                epsilon=epsilon,
                delta=delta,
                n_items=n_items,
                factors=factors,
                iterations=iterations,
            )
        else:
            raise ConfigError(f"--model must be dpals or dpease, got {model!r}")
        driver = make_driver(
            Identity.load(key),
            Roster.load(roster),
            config,
            checkpoint=checkpoint,
            resume=resume,
            timeout=timeout,
        )
        result = driver.train()
        if isinstance(result, SiloResult):
            np.savez(
                out,
                item_factors=result.item_factors,
                head_items=result.head_items,
                noisy_counts=result.noisy_counts,
                popularity_blend=np.asarray(result.popularity_blend),
            )
            what = f"{len(result.head_items)} head items × {result.item_factors.shape[1]} factors"
        else:
            np.savez(
                out,
                weights=result.weights,
                head_items=result.head_items,
                item_popularity=result.item_popularity,
                popularity_blend=np.asarray(result.popularity_blend),
            )
            what = f"EASE weights over {len(result.head_items)} items"
        out.with_suffix(".json").write_text(result.guarantee.to_json())
        console.print(
            f"released {out} ({what}); "
            f"user-level ε = {result.guarantee.epsilon:.4g} at δ = {config.delta:g} "
            "(RDP accountant)"
        )
        console.print("per-release seconds: " + ", ".join(f"{s:.2f}" for s in result.round_seconds))


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
        str, typer.Option("--user", "-u", help="External user id (history read from the file).")
    ],
    k: Annotated[int, typer.Option("--k", "-k")] = 10,
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
    from privrec.errors import MissingUserDataError
    from privrec.models import load_model
    from privrec.secure.mpc import MPCParams, secure_recommend

    with handle_errors():
        model = load_model(model_path)
        if getattr(model, "_released_only", False):
            raise MissingUserDataError(
                f"{model_path} holds only released parameters: no history for user {user!r}"
            )
        if not hasattr(model, "item_factors_"):
            raise ConfigError(f"{type(model).__name__} is not a factor model (no item factors)")
        idx = model.user_index(coerce_ids([user], model.user_ids_))
        history = model.user_items_[idx].toarray()[0]
        if item_norm_bound is None:
            item_norm_bound = float(np.linalg.norm(model.item_factors_, axis=1).max()) * 1.01
        params = MPCParams(user_norm_bound=user_norm_bound, item_norm_bound=item_norm_bound)
        res = secure_recommend(
            model, history, k=k, public_items=public_items, params=params, tls=tls, timeout=timeout
        )
        console.print(f"secure top-{k} for user {user} (ids only, no scores):")
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
            console.print("top-k items: " + " ".join(str(i) for i in res.items))
        else:
            console.print(f"party {party_id} done (receives no output)")
        console.print(f"bytes sent {res.bytes_sent:,}; protocol {res.seconds:.2f} s")
