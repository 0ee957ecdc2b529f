"""``privrec privacy …``: what a saved private model promises, and whether its records back it up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from privrec.cli.common import console, handle_errors
from privrec.errors import ConfigError

privacy_app = typer.Typer(
    help="Inspect and verify the privacy guarantee of a saved model.", no_args_is_help=True
)


def _private_model(model_path: Path) -> Any:
    from privrec.models import load_model

    model = load_model(model_path)  # verifies the guarantee (ε from the events, parameters)
    guarantee = getattr(model, "guarantee_", None)
    if guarantee is None:
        raise ConfigError(f"{model.name} is not a private model: it carries no privacy guarantee")
    return model


@privacy_app.command("explain")
def privacy_explain(
    model_path: Annotated[Path, typer.Argument(help="A private model saved by `privrec train`.")],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the guarantee as JSON instead.")
    ] = False,
) -> None:
    """Print what a saved private model promises, in numbers and in plain words.

    The guarantee is verified first (ε recomputed from the stored events); a file whose
    records do not back up its ε is refused and no ε is printed.
    """
    with handle_errors():
        model = _private_model(model_path)
        guarantee = model.guarantee_
        if json_out:
            console.print_json(guarantee.to_json())
            return
        console.print(guarantee.explain(), highlight=False, markup=False)
        if not getattr(model, "_released_only", True):
            console.print(
                "WARNING: this file also stores the training users and interactions "
                "(saved with include_user_data), which the guarantee does NOT cover.",
                style="bold red",
                highlight=False,
            )
        table = Table(
            "release", "accounting event", title="noisy releases (composed by the accountant)"
        )
        from privrec.privacy.events import describe_event

        for spent in guarantee.spent_events:
            table.add_row(spent.label, describe_event(spent.event))
        console.print(table)


@privacy_app.command("verify")
def privacy_verify(
    model_path: Annotated[Path, typer.Argument(help="A private model file to check.")],
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key",
            help="Require an Ed25519 signature (MODEL.sig) by this key: hex, or a .pub file.",
        ),
    ] = None,
) -> None:
    """Recompute ε from the stored accounting events and check it against the stored guarantee.

    Also checks the events are well formed and that δ, the privacy unit, the accountant and
    the seeded-noise flag agree with the model's parameters; when the file is signed (or
    --public-key is given), checks the signature too. Exits with status 1 (and prints the
    mismatch) when anything disagrees.
    """
    from privrec.models.signing import signature_path, verify_file

    with handle_errors():
        signed = signature_path(model_path).is_file()
        signer = None
        if signed or public_key is not None:
            key = public_key
            if key is not None and Path(key).is_file():
                key = Path(key).read_text().strip()
            signer = verify_file(model_path, key)
        model = _private_model(model_path)
        g = model.guarantee_
        recomputed = g.recompute_epsilon()
        console.print(
            f"{model_path}: OK — ε = {g.epsilon:.6g} at δ = {g.delta:.1e} (per {g.unit.value}) "
            f"recomputed from {len(g.events)} stored event{'s' if len(g.events) != 1 else ''} "
            f"with the {g.accountant.value.upper()} accountant: {recomputed:.6g}; δ, unit, "
            "accountant and seeding agree with the model's parameters; events well formed.",
            highlight=False,
            markup=False,
        )
        if signer is not None:
            console.print(
                f"signature: valid Ed25519 signature by {signer}"
                + ("" if public_key else " (pass --public-key to require this signer)"),
                highlight=False,
                markup=False,
            )
        else:
            console.print(
                "signature: none — the stored ε and events agree with each other, which anyone "
                "editing both could arrange: this does not show who produced the file (sign it "
                "with `privrec privacy sign`, or check a release against the ledger with "
                "`privrec check --release FILE --db URL`)",
                highlight=False,
                markup=False,
            )


@privacy_app.command("keygen")
def privacy_keygen(
    key_path: Annotated[Path, typer.Argument(help="Where to create the private signing key.")],
) -> None:
    """Create an Ed25519 signing key (mode 0600, never overwritten) and KEY.pub beside it."""
    from privrec.models.signing import generate_key

    with handle_errors():
        pub = generate_key(key_path)
        console.print(
            f"private key: {key_path} (mode 600); public key: {pub} — give the public key to reviewers",
            highlight=False,
        )


@privacy_app.command("sign")
def privacy_sign(
    model_path: Annotated[Path, typer.Argument(help="A model file to sign.")],
    key: Annotated[Path, typer.Option("--key", help="Private key from `privrec privacy keygen`.")],
) -> None:
    """Sign a model file (detached Ed25519 signature over its SHA-256, written to MODEL.sig)."""
    from privrec.models.signing import sign_file

    with handle_errors():
        _private_model(model_path)  # only a file whose guarantee verifies is worth signing
        out = sign_file(model_path, key)
        console.print(f"signed {model_path} → {out}", highlight=False)
