"""Certificates made on the spot for TLS tests (cryptography): a self-signed server certificate,
and a small CA with a client certificate it signed."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def self_signed_certificate(directory: Path, name: str = "tls-peer.example.test") -> tuple[Path, Path]:
    """A fresh P-256 key and a self-signed certificate for `name`: (cert file, key file), PEM,
    the key readable by its owner only."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _certificate(name, key, name, key)
    key_file, cert_file = directory / "key.pem", directory / "cert.pem"
    _write_key(key, key_file)
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file


def client_certificate(directory: Path, name: str = "client.example.test") -> tuple[Path, Path, Path, bytes]:
    """A CA and a client certificate it signed: (CA file, client cert file, client key file,
    client certificate in DER)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Test CA", ca_key, "Test CA", ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _certificate(name, key, "Test CA", ca_key)
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "client.pem", directory / "client.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_file)
    return ca_file, cert_file, key_file, certificate.public_bytes(serialization.Encoding.DER)
