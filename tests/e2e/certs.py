"""The one X.509 builder of the end-to-end tests: throwaway CAs and leaves
shaped like X509-SVIDs (EC P-256, SHA-256), for the SDK-only PKI
(`mcp_fixtures.make_test_pki`) and for the certificates SPIRE would never
issue (`Spire.mint_leaf`)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey
ORGANIZATION = "spiffe-mcp-gateway test"
# Certificates start a little in the past, for clock skew between processes.
BACKDATE = dt.timedelta(minutes=5)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, digital_signature: bool, key_agreement: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=key_agreement, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def new_ca(common_name: str, *, valid_for: dt.timedelta) -> tuple[x509.Certificate, Key]:
    """A self-signed root CA valid from a little before now for `valid_for`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=False, key_agreement=False, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def new_leaf(
    ca_cert: x509.Certificate,
    ca_key: Key,
    uri_sans: Sequence[str],
    *,
    dns_sans: Sequence[str] = (),
    name: str = "leaf",
    is_ca: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    digital_signature: bool = True,
) -> tuple[x509.Certificate, Key]:
    """A certificate signed by the CA, shaped like an X509-SVID: EKU
    serverAuth+clientAuth, subject CN `name`, these URI and DNS SANs (no SAN
    extension when both are empty).

    The knobs make what SPIRE never issues: is_ca=True gives cA=true and
    keyCertSign+cRLSign; digital_signature=False gives keyAgreement instead.
    not_before/not_after default to a little before now / now + 1 h."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - BACKDATE)
        .not_valid_after(not_after or now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=digital_signature, key_agreement=not digital_signature, cert_sign=is_ca),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uri_sans]
    sans += [x509.DNSName(d) for d in dns_sans]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def write(cert_path: Path, key_path: Path, cert: x509.Certificate, key: Key) -> tuple[Path, Path]:
    """The certificate and its PKCS#8 key (mode 0600) as PEM files."""
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return cert_path, key_path


def load(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, Key]:
    """A CA written by `write` (or by spire/start.sh), to sign with."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey), type(key)
    return cert, key
