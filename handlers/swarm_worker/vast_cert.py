"""vast.ai's per-instance TLS certificate, requested the way vast's own images get theirs.

    python -m handlers.swarm_worker.vast_cert      (images/swarm-worker/start.sh, on vast.ai, as root)

vast's PyWorker launcher (vast-ai/pyworker start_server.sh:68-102) makes a key and a CSR and posts
the CSR to `https://console.vast.ai/api/v0/sign_cert/?instance_id=$CONTAINER_ID`; the answer is a
certificate signed by vast.ai's CA, which CloudBackends trusts for vast workers (UseTls) and vast's
PyWorker serves with `USE_SSL=true`. This image replaces that launcher, so it asks itself: it writes
/etc/instance.key (0600) and /etc/instance.crt, only when the answer is a certificate for that key.
Nothing happens when both files exist. Exit 0 when they are there afterwards, 1 otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

import requests

from handlers.swarm_worker.config import VAST_INSTANCE_CERT, VAST_INSTANCE_KEY

log = logging.getLogger("swarm.vast_cert")

SIGN_URL = "https://console.vast.ai/api/v0/sign_cert/"


def instance_id() -> str | None:
    """CONTAINER_ID, else the number in VAST_CONTAINERLABEL (`C.<id>`)."""
    cid = os.environ.get("CONTAINER_ID", "").strip()
    label = os.environ.get("VAST_CONTAINERLABEL", "").strip()
    return cid or (label[2:] if label.startswith("C.") else None) or None


def request_cert(cert: Path, key: Path, *, instance: str, sign_url: str = SIGN_URL, timeout: float = 30) -> None:
    """Have vast.ai sign a fresh key for `instance`; raises RuntimeError saying what failed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                                    x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
                                    x509.NameAttribute(NameOID.COMMON_NAME, "pyworker.vast.ai")]))
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("0.0.0.0"))]),
                          critical=False)
           .sign(private, hashes.SHA256()))
    try:
        r = requests.post(sign_url, params={"instance_id": instance}, timeout=timeout,
                          data=csr.public_bytes(serialization.Encoding.PEM),
                          headers={"Content-Type": "application/octet-stream"})
    except requests.RequestException as exc:
        raise RuntimeError(f"vast.ai's sign_cert did not answer: {exc}") from None
    if r.status_code != 200:
        raise RuntimeError(f"vast.ai's sign_cert answered HTTP {r.status_code}: {r.text[:200]}")
    try:
        signed = x509.load_pem_x509_certificate(r.content)
    except ValueError:
        raise RuntimeError("vast.ai's sign_cert answered something that is not a PEM certificate") from None
    pem = serialization.PublicFormat.SubjectPublicKeyInfo
    if signed.public_key().public_bytes(serialization.Encoding.PEM, pem) != private.public_key().public_bytes(
            serialization.Encoding.PEM, pem):
        raise RuntimeError("vast.ai's sign_cert answered a certificate for another key")
    key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    cert.write_bytes(r.content)
    cert.chmod(0o644)


def main() -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if VAST_INSTANCE_CERT.is_file() and VAST_INSTANCE_KEY.is_file():
        return 0
    instance = instance_id()
    if instance is None:
        log.error("no CONTAINER_ID or VAST_CONTAINERLABEL: not on vast.ai, no instance certificate to ask for")
        return 1
    try:
        request_cert(VAST_INSTANCE_CERT, VAST_INSTANCE_KEY, instance=instance,
                     sign_url=os.environ.get("VAST_SIGN_CERT_URL") or SIGN_URL)
    except (RuntimeError, OSError) as exc:
        log.error("no TLS certificate for this instance: %s", exc)
        return 1
    log.info("got this instance's TLS certificate from vast.ai (%s)", VAST_INSTANCE_CERT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
