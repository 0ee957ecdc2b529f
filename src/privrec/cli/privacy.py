"""``privrec privacy …``: what a saved private model promises, and whether its records back it up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from privrec.cli.common import VerifyKeyOpt, console, handle_errors, signature_line
from privrec.errors import ConfigError, DataError

privacy_app = typer.Typer(
    help="Inspect and verify the privacy guarantee of a saved model.", no_args_is_help=True
)


def _private_model(model_path: Path, verify_key: Path | None = None) -> Any:
    from privrec.models import load_model

    # verifies the signature first (with a key), then the guarantee (ε from the events)
    model = load_model(model_path, verify_key=verify_key)
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
    verify_key: VerifyKeyOpt = None,
) -> None:
    """Print what a saved private model promises, in numbers and in plain words.

    The guarantee is verified first (ε recomputed from the stored events); a file whose
    records do not back up its ε is refused and no ε is printed. With --verify-key, a file
    not signed by that key is refused before it is read. The file's signer is printed either
    way (marked unchecked without a key).
    """
    with handle_errors():
        model = _private_model(model_path, verify_key)
        guarantee = model.guarantee_
        if json_out:
            import json

            doc = json.loads(guarantee.to_json())
            sig = model.file_signature_
            doc["file_signature"] = (
                None if sig is None else {"signer": sig.fingerprint, "verified": sig.verified}
            )
            console.print_json(json.dumps(doc))
            return
        console.print(guarantee.explain(), highlight=False, markup=False)
        console.print(signature_line(model), highlight=False, markup=False)
        if not getattr(model, "_released_only", True):
            console.print(
                "WARNING: this file also stores the training users and interactions "
                "(saved with include_user_data), which the guarantee does NOT cover.",
                style="bold red",
                highlight=False,
            )
        uncovered = getattr(model, "file_uncovered_", ())
        if uncovered:
            console.print(
                "WARNING: this file also holds data the guarantee does NOT cover (privrec never "
                f"writes it into a private model): {', '.join(uncovered)}.",
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
    verify_key: VerifyKeyOpt = None,
    consistency_only: Annotated[
        bool,
        typer.Option(
            "--consistency-only",
            help="Only check that ε and the events agree; do not fail a file trained with "
            "seeded noise or saved with its training users (test fixtures, experiments).",
        ),
    ] = False,
) -> None:
    """Recompute ε from the stored accounting events and check it against the stored guarantee.

    Also checks the events are well formed and that δ, the privacy unit, the accountant and
    the seeded-noise flag agree with the model's parameters; with --verify-key, first checks
    that the file is signed by that key and unchanged since. Exits with status 1 (and prints
    the mismatch) when anything disagrees — and also when the file is not a private release
    at all, however consistent its numbers: noise drawn from a seed (anyone who knows the seed
    can subtract it) or training users stored beside the model (the guarantee does not cover
    them). ``--consistency-only`` keeps just the arithmetic check for such files.
    """
    with handle_errors():
        model = _private_model(model_path, verify_key)
        g = model.guarantee_
        recomputed = g.recompute_epsilon()
        not_private = []
        if g.seeded_noise:
            not_private.append(
                "its noise was drawn from a seed (reproducible: whoever knows the seed can "
                "subtract it)"
            )
        if not getattr(model, "_released_only", True):
            not_private.append(
                "it stores the training users and interactions (saved with include_user_data), "
                "which the guarantee does not cover"
            )
        uncovered = getattr(model, "file_uncovered_", ())
        if uncovered:
            not_private.append(
                "the file also holds data privrec never writes into a private model and the "
                f"guarantee does not cover ({', '.join(uncovered)})"
            )
        verdict = "OK" if not not_private else "CONSISTENT but NOT A PRIVATE RELEASE"
        older = (
            " (the file states ε at dp-accounting's denser default orders, as files written "
            "before 2026-12-07 do — a valid bound for its Gaussian events; privrec's integer "
            "orders give the larger value shown)"
            if recomputed > g.epsilon * (1 + 1e-6) + 1e-9
            else ""
        )
        console.print(
            f"{model_path}: {verdict} — ε = {g.epsilon:.6g} at δ = {g.delta:.1e} (per {g.unit.value}) "
            f"recomputed from {len(g.events)} stored event{'s' if len(g.events) != 1 else ''} "
            f"with the {g.accountant.value.upper()} accountant: {recomputed:.6g}{older}; δ, unit, "
            "accountant and seeding agree with the model's parameters; events well formed.",
            highlight=False,
            markup=False,
        )
        for t in g.tiers:
            console.print(
                f"  tier: users who asked for ε = {t['requested_epsilon']:g} contribute with weight "
                f"{t['weight']:.6g} and are ({t['epsilon']:.6g}, {g.delta:.1e})-DP — recomputed "
                "from the stored events at that weight",
                highlight=False,
                markup=False,
            )
        if model.file_signature_ is None or not model.file_signature_.verified:
            console.print(
                signature_line(model) + ". The stored ε and events agree with each other, "
                "which anyone editing both could arrange: this does not show who produced the "
                "file — only a signature checked against the producer's key (--verify-key) "
                "does, and only the ledger (`privrec check --release FILE --db URL`) shows that "
                "its charge was recorded",
                highlight=False,
                markup=False,
            )
        else:
            console.print(signature_line(model), highlight=False, markup=False)
        if not_private:
            for why in not_private:
                console.print(f"NOT PRIVATE: {why}.", style="bold red", highlight=False)
            if not consistency_only:
                raise typer.Exit(code=1)


@privacy_app.command("keygen")
def privacy_keygen(
    directory: Annotated[
        Path, typer.Argument(help="Folder for signing.key (private) and signing.pub (public).")
    ],
) -> None:
    """Create an Ed25519 model-signing key pair: DIR/signing.key (mode 600, never overwritten)
    and DIR/signing.pub (give it to whoever loads your models)."""
    from privrec.models.signing import fingerprint, generate_keypair, load_verify_key

    with handle_errors():
        private, public = generate_keypair(directory)
        console.print(
            f"private key: {private} (mode 600; keep it secret); public key: {public} "
            f"(fingerprint {fingerprint(load_verify_key(public))}) — hand it to reviewers",
            highlight=False,
            markup=False,
        )


@privacy_app.command("sign")
def privacy_sign(
    model_path: Annotated[Path, typer.Argument(help="A model file to sign (in place).")],
    key: Annotated[
        Path, typer.Option("--key", help="Private key (signing.key from `privrec privacy keygen`).")
    ],
) -> None:
    """Sign a model file in place (Ed25519 over all its bytes, stored in the zip comment).

    Only a file whose guarantee verifies is signed; a signed file is re-signed."""
    from privrec.models.signing import file_sha256, load_signing_key, sign_file

    with handle_errors():
        signer = load_signing_key(key)
        try:
            with model_path.open("rb") as fh:
                checked = file_sha256(fh)  # the bytes checked are the bytes signed
        except OSError as exc:
            raise DataError("model file cannot be read", file=model_path, found=str(exc)) from None
        _private_model(model_path)  # only a file whose guarantee verifies is worth signing
        sig = sign_file(model_path, signer, expect_sha256=checked)
        console.print(f"signed {model_path} as {sig.fingerprint}", highlight=False, markup=False)
