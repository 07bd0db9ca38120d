"""A stand-in for vast.ai's certificate signing endpoint, `POST /api/v0/sign_cert/?instance_id=<id>`.

What vast's start script sends (vast-ai/pyworker start_server.sh:91-101 at 910f6f2): a PEM CSR as
the raw body with `Content-Type: application/octet-stream`, the instance id in the query string;
the answer body is saved as the instance certificate. Here a throw-away CA signs the CSR's key
(the real CA is vast's; clients trust it through the root certificate the SDK fetches).
`fail_with` makes every answer that HTTP status instead.
"""

from __future__ import annotations

import datetime
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.fakes.threaded_http import LocalService, read_body, reply, reply_json


class VastCertSigner(LocalService):
    def __init__(self, *, fail_with: int | None = None) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.fail_with = fail_with
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self.ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test vast.ai CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                        .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
                        .not_valid_before(now - datetime.timedelta(minutes=5))
                        .not_valid_after(now + datetime.timedelta(days=1))
                        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                        .sign(self.ca_key, hashes.SHA256()))

    @property
    def url(self) -> str:
        return f"{self.origin}/api/v0/sign_cert/"

    def ca_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        parts = urlsplit(handler.path)
        body = read_body(handler)
        with self._lock:
            self.requests.append({"method": method, "path": parts.path, "query": parse_qs(parts.query),
                                  "content_type": handler.headers.get("Content-Type"), "body": body})
        if method != "POST" or parts.path.rstrip("/") != "/api/v0/sign_cert":
            return reply_json(handler, 404, {"error": "not found"})
        if self.fail_with:
            return reply_json(handler, self.fail_with, {"error": "signing unavailable"})
        try:
            csr = x509.load_pem_x509_csr(body)
        except ValueError:
            return reply_json(handler, 400, {"error": "not a CSR"})
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self.ca_cert.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
                               critical=False)
                .sign(self.ca_key, hashes.SHA256()))
        reply(handler, 200, cert.public_bytes(serialization.Encoding.PEM), "application/octet-stream")
