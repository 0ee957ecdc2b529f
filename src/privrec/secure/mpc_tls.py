"""TLS material for the MPC parties: a throw-away CA and one certificate per party.

Set-up step for :func:`privrec.secure.mpc.run_party` with ``tls`` (see :mod:`privrec.secure.mpc`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privrec.errors import ConfigError

__all__ = ["N_PARTIES", "TLSFiles", "make_tls_material", "tls_name"]

#: MPyC is insecure with two parties (no honest majority with threshold ≥ 1).
N_PARTIES = 3


def tls_name(party_id: int) -> str:
    """The DNS name in party ``party_id``'s certificate, checked by every peer connecting to it."""
    return f"privrec-mpc-party-{party_id}"


@dataclass(frozen=True)
class TLSFiles:
    """One party's TLS material (PEM): the set-up CA, its own certificate and private key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: str | Path, party_id: int) -> TLSFiles:
        """The files :func:`make_tls_material` wrote for ``party_id`` in ``directory``."""
        d = Path(directory)
        return cls(d / "ca.pem", d / f"party-{party_id}.pem", d / f"party-{party_id}.key")

    def contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(server, client) contexts: TLS ≥ 1.2, mutual authentication against the CA."""
        from privrec.keyfiles import check_secret

        for f in (self.ca, self.cert, self.key):
            if not Path(f).is_file():
                raise ConfigError(f"TLS file {f} not found")
        check_secret(self.key)  # a private key others can read is refused
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        server.verify_mode = ssl.CERT_REQUIRED
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        for ctx in (server, client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(self.cert), str(self.key))
        return server, client


def make_tls_material(directory: str | Path, *, days: int = 365) -> Path:
    """Create a CA and one certificate per party (``ca.pem``, ``party-<i>.pem|.key``).

    Set-up step for :func:`run_party` with ``tls``: give each party ``ca.pem`` and its own
    certificate and key, and keep ``ca.key`` offline (or delete it). Every certificate
    names its party (:func:`tls_name`), so a party connecting to party ``j`` checks that it
    reached ``j``. EC P-256 keys and X.509 from ``cryptography``; key files are mode 0600.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from privrec.keyfiles import write_secret

    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create key directory {str(d)!r}: {exc.strerror}") from None
    now = datetime.datetime.now(datetime.UTC)

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        write_secret(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    def certificate(
        name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, ca: bool
    ) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer if not ca else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name)]), False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("privrec-mpc CA", ca_key, x509.Name([]), ca_key, True)
    (d / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    write_key(d / "ca.key", ca_key)
    for i in range(N_PARTIES):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = certificate(tls_name(i), key, ca_cert.subject, ca_key, False)
        (d / f"party-{i}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(d / f"party-{i}.key", key)
    return d
