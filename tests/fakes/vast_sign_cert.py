"""A local stand-in for vast.ai's certificate signer, `POST /api/v0/sign_cert/?instance_id=<id>`.

What vast's PyWorker launcher relies on (vast-ai/pyworker start_server.sh:91-101): the body is a PEM
CSR (`Content-Type: application/octet-stream`, no credentials); the answer is the PEM certificate for
the CSR's key, signed by vast.ai's CA (here a CA made per stand-in). A request without `instance_id`
or with a body that is not a CSR gets 400. `wrong_key=True` answers with a certificate for another key.
"""

from __future__ import annotations

import datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.fakes.threaded_http import LocalService, read_body, reply, reply_json


class VastCertSigner(LocalService):
    methods = ("POST",)

    def __init__(self, *, wrong_key: bool = False) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.wrong_key = wrong_key
        self.requests: list[dict] = []
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Vast.ai Jupyter CA (stand-in)")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(self._ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .sign(self._ca_key, hashes.SHA256()))

    @property
    def url(self) -> str:
        return f"{self.origin}/api/v0/sign_cert/"

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        parts = urlsplit(h.path)
        body = read_body(h)
        instance = parse_qs(parts.query).get("instance_id", [""])[0]
        self.requests.append({"path": parts.path, "instance_id": instance,
                              "content_type": h.headers.get("Content-Type")})
        if parts.path.rstrip("/") != "/api/v0/sign_cert":
            return reply_json(h, 404, {"error": "not found"})
        try:
            csr = x509.load_pem_x509_csr(body)
        except ValueError:
            csr = None
        if not instance or csr is None:
            return reply_json(h, 400, {"success": False, "error": "invalid_request"})
        public = ec.generate_private_key(ec.SECP256R1()).public_key() if self.wrong_key else csr.public_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self.ca.subject)
                .public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(self._ca_key, hashes.SHA256()))
        reply(h, 200, cert.public_bytes(serialization.Encoding.PEM), "application/x-pem-file")
