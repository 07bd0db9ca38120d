"""A self-signed certificate for 127.0.0.1, standing in for vast.ai's per-instance certificate."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path


def self_signed_cert(folder: Path, common_name: str = "127.0.0.1") -> tuple[Path, Path]:
    """(instance.crt, instance.key) for IP 127.0.0.1 and localhost, valid for a day, that no client trusts
    unless told to (vast.ai's instance certificates name the instance, e.g. `C.12345`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "instance.crt", folder / "instance.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def client_context(cert: Path) -> ssl.SSLContext:
    """A client context that trusts only `cert` (as CloudBackends trusts only vast.ai's root)."""
    return ssl.create_default_context(cafile=str(cert))
