"""``privrec he …``: homomorphic private scoring of one user (CKKS)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import scipy.sparse as sp
import typer
from rich.table import Table

from privrec.cli.common import console, handle_errors, user_history

# ------------------------------------------------------- he: private scoring
he_app = typer.Typer(
    help="Homomorphic private scoring (needs the \\[he] extra).", no_args_is_help=True
)


@he_app.command("score")
def he_score(
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

    from privrec.models import load_model
    from privrec.secure.he import (
        HE_STANDARD_MAX_BITS,
        PrivateScoringClient,
        PrivateScoringServer,
        ScoreNoise,
    )

    with handle_errors():
        model = load_model(model_path)
        row, who = user_history(model, model_path, user, history)
        items_row = sp.csr_matrix(row.reshape(1, -1))
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
        u = client.fold_in(model, items_row)
        request = client.encrypt_query(u).to_bytes()
        encrypt_s = client.last_timings["encrypt"]
        t0 = time.perf_counter()
        response = server.score(request).to_bytes()
        server_s = time.perf_counter() - t0
        seen = items_row.indices
        head = getattr(model, "head_items_", None)
        if head is not None:  # items a private model did not release are never recommended
            seen = np.union1d(seen, np.setdiff1d(np.arange(model.n_items_), head))
        items, scores = _rank(model, client, response, u, items_row, k, seen)
        table = Table("rank", "item", "score", title=f"private top-{k} for {who}")
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


def _rank(
    model: Any,
    client: Any,
    response: bytes,
    u: np.ndarray,
    items_row: sp.csr_matrix,
    k: int,
    seen: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` from the decrypted scores, ranked exactly as the model ranks ``u·Vᵀ``.

    A private model blends its factor scores with its released noisy counts (per user by
    history length): the client applies the same post-processing to the decrypted inner
    products, from public model arrays and the user's own history only, so encrypted and
    plaintext scoring recommend the same items.
    """
    from privrec.models.ranking import top_k

    head = getattr(model, "head_items_", None)
    rank_head = getattr(model, "_rank_head", None)
    if head is None or rank_head is None:
        items, scores = client.recommend(response, k=k, seen=seen)
        return np.asarray(items), np.asarray(scores)
    raw = client.decrypt_scores(response)
    cold = not np.any(np.asarray(u) != 0)
    if cold:
        # the model's scores are exactly 0 for a user without head history; the decrypted ones
        # carry CKKS's ~1e-6 error, which standardising would blow up past the popularity prior
        raw = np.zeros_like(raw)
    ranked = rank_head(
        raw[head][None, :].astype(np.float32), np.array([items_row.nnz]), np.array([cold])
    )
    with_neighbours = getattr(model, "_with_neighbours", None)
    if with_neighbours is not None:  # the model's own post-processing of the user's items
        ranked = with_neighbours(ranked, items_row)
    ranked[0, np.asarray(seen, dtype=np.int64)] = -np.inf
    items, scores = top_k(ranked, int(min(max(k, 0), ranked.shape[1])))
    return items[0], scores[0]
