"""The vast.ai instance certificate: `python -m common.vast_tls` (from either venv; both images' start scripts).

With USE_SSL=true (vast's default) the PyWorker front serves HTTPS with `/etc/instance.crt` and
`/etc/instance.key` (vastai 1.9.1 `vastai/serverless/server/lib/server.py:16-26`; without them it
reports "Failed to get SSL Certificate" and never becomes ready). vast's own start script makes
them (vast-ai/pyworker `start_server.sh:68-102` at 910f6f2): a new RSA-2048 key and a CSR
(CN pyworker.vast.ai, SAN IP 0.0.0.0), the CSR POSTed as application/octet-stream to
`https://console.vast.ai/api/v0/sign_cert/?instance_id=$CONTAINER_ID`, the answer saved as the
certificate. This module does the same, and checks the answer: a PEM certificate for this key.
Nothing is written unless signing succeeded, so a failure never leaves a mismatched pair.

Environment: CONTAINER_ID (required), VAST_SIGN_CERT_URL (vast's endpoint), VAST_TLS_DIR (/etc).
Exit status 0 when the pair is in place, 1 with one `TLS: ...` line on stderr saying why not.
Needs only the standard library and `cryptography` (a dependency of vastai and of runpod), so it runs
in the PyWorker's venv as well as the worker's. The swarm worker's gateway serves the same pair.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

SIGN_CERT_URL = "https://console.vast.ai/api/v0/sign_cert/"
ATTEMPTS = 3


class SigningFailed(Exception):
    pass


def key_and_csr():
    """(private key, CSR PEM bytes), the subject and SAN vast's start script uses."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                         x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "pyworker.vast.ai")])
    csr = (x509.CertificateSigningRequestBuilder().subject_name(subject)
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("0.0.0.0"))]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


def request_signature(csr_pem: bytes, container_id: str, url: str) -> bytes:
    """POST the CSR to vast's signing endpoint (a few tries); the response body."""
    full = f"{url}?{urllib.parse.urlencode({'instance_id': container_id})}"
    last = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(2.0 * attempt)
        req = urllib.request.Request(full, data=csr_pem, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.read(1 << 20)
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code != 429:
                break
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
    raise SigningFailed(last)


def checked_certificate(body: bytes, key) -> bytes:
    """The PEM certificate in `body`, if it certifies `key`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(body)
    except ValueError:
        raise SigningFailed(f"the answer is not a PEM certificate ({body[:80]!r})") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (cert.public_key().public_bytes(serialization.Encoding.PEM, pub)
            != key.public_key().public_bytes(serialization.Encoding.PEM, pub)):
        raise SigningFailed("the certificate returned is not for this instance's key")
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def make_instance_certificate(container_id: str, *, url: str = SIGN_CERT_URL, tls_dir: Path = Path("/etc")) -> Path:
    """Write `instance.key` and a vast-signed `instance.crt` into `tls_dir`; the certificate's path."""
    from cryptography.hazmat.primitives import serialization

    if not container_id:
        raise SigningFailed("CONTAINER_ID is not set (vast.ai sets it on every instance)")
    key, csr = key_and_csr()
    cert = checked_certificate(request_signature(csr, container_id, url), key)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    tls_dir.mkdir(parents=True, exist_ok=True)
    _write(tls_dir / "instance.key", key_pem, 0o600)
    _write(tls_dir / "instance.crt", cert, 0o644)
    return tls_dir / "instance.crt"


def main() -> int:
    url = os.environ.get("VAST_SIGN_CERT_URL") or SIGN_CERT_URL
    try:
        path = make_instance_certificate(os.environ.get("CONTAINER_ID", ""), url=url,
                                         tls_dir=Path(os.environ.get("VAST_TLS_DIR") or "/etc"))
    except (SigningFailed, OSError) as exc:
        print(f"TLS: signing the instance certificate at {url} failed: {exc}. The PyWorker front cannot serve "
              "HTTPS (it reports 'Failed to get SSL Certificate' and never becomes ready). Set USE_SSL=false to "
              "serve plain HTTP instead: prompts, images and auth_data then travel unencrypted.", file=sys.stderr)
        return 1
    print(f"TLS: instance certificate signed by vast.ai: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
