"""Local stand-in for the Gemini API (Files API + generateContent), for tests only.

Follows the routes google-genai 3.6.1 uses (googleapis/python-genai: `google/genai/files.py:273`
upload start, `:632-638` the upload URL header, `:366` / `:446` get / delete, `models.py:4545`
generateContent; `_api_client.py:1337` the `x-goog-api-key` header; https://ai.google.dev/api/files):
- `POST /upload/{ver}/files` with `X-Goog-Upload-Command: start` -> `X-Goog-Upload-URL` header
- `POST <that URL>` with `X-Goog-Upload-Command: upload, finalize` + the bytes -> `{"file": {... "PROCESSING"}}`
- `GET /{ver}/files/{id}` -> the file; PROCESSING for `processing_polls` polls, then ACTIVE
  (or FAILED when the uploaded bytes contain `FAIL_MARKER`)
- `DELETE /{ver}/files/{id}` -> `{}`
- `POST /{ver}/models/{model}:generateContent` -> one candidate with a caption
Errors are `{"error": {"code", "message", "status"}}` with the same HTTP status: 400
`INVALID_ARGUMENT` for a wrong `x-goog-api-key`, 404 `NOT_FOUND` for a model not in
`models` (a retired name), 429 `RESOURCE_EXHAUSTED` for the next `rate_limit_next` calls.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.fakes.threaded_http import BackgroundServer

FAIL_MARKER = b"GEMINI_FAIL"


@dataclass
class GeminiState:
    api_key: str = "test-gemini-key"
    models: set[str] = field(default_factory=lambda: {"gemini-3.5-flash", "gemini-3.5-flash-lite"})
    processing_polls: int = 1
    rate_limit_next: int = 0  # that many generateContent calls answer 429 first
    files: dict[str, dict] = field(default_factory=dict)
    sessions: dict[str, dict] = field(default_factory=dict)
    uploads: list[dict] = field(default_factory=list)  # {"name", "size", "sha256", "mime_type"}
    generate_calls: list[dict] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    rate_limited: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def caption_for(sha256: str) -> str:
    return f"A person walks slowly across a sunlit street while the camera pans left, clip {sha256[:8]}."


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeGemini/1.0"
    state: GeminiState  # set on the subclass made per server

    def log_message(self, *args) -> None:
        pass

    def _json(self, code: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, status: str, message: str) -> None:
        self._json(code, {"error": {"code": code, "message": message, "status": status}})

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _authorized(self) -> bool:
        key = self.headers.get("x-goog-api-key") or ""
        if key != self.state.api_key:
            self._error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
            return False
        return True

    def _file_json(self, f: dict) -> dict:
        return {k: v for k, v in f.items() if not k.startswith("_")}

    def do_POST(self) -> None:  # noqa: N802
        st = self.state
        path = self.path.split("?")[0]
        body = self._body()
        if m := re.fullmatch(r"/upload/([^/]+)/files", path):
            if not self._authorized():
                return
            if "start" not in (self.headers.get("X-Goog-Upload-Command") or ""):
                return self._error(400, "INVALID_ARGUMENT", "expected X-Goog-Upload-Command: start")
            meta = (json.loads(body or b"{}").get("file") or {})
            sid = uuid.uuid4().hex
            with st.lock:
                st.sessions[sid] = {"meta": meta, "ver": m.group(1)}
            host = self.headers.get("Host")
            return self._json(200, {}, {"X-Goog-Upload-URL": f"http://{host}/upload-session/{sid}",
                                        "X-Goog-Upload-Status": "active"})
        if m := re.fullmatch(r"/upload-session/([0-9a-f]+)", path):
            with st.lock:
                session = st.sessions.pop(m.group(1), None)
            if session is None:
                return self._error(404, "NOT_FOUND", "upload session not found")
            fid = uuid.uuid4().hex[:12]
            meta = session["meta"]
            digest = hashlib.sha256(body).hexdigest()
            mime = meta.get("mimeType") or meta.get("mime_type") or self.headers.get("X-Goog-Upload-Header-Content-Type")
            f = {
                "name": f"files/{fid}", "displayName": meta.get("displayName", ""), "mimeType": mime,
                "sizeBytes": str(len(body)), "sha256Hash": digest, "state": "PROCESSING",
                "uri": f"http://{self.headers.get('Host')}/{session['ver']}/files/{fid}",
                "_polls": 0, "_fail": FAIL_MARKER in body,
            }
            with st.lock:
                st.files[fid] = f
                st.uploads.append({"name": f["name"], "size": len(body), "sha256": digest, "mime_type": mime})
            return self._json(200, {"file": self._file_json(f)}, {"X-Goog-Upload-Status": "final"})
        if m := re.fullmatch(r"/([^/]+)/models/([^/:]+):generateContent", path):
            if not self._authorized():
                return
            model = m.group(2)
            with st.lock:
                if st.rate_limit_next > 0:
                    st.rate_limit_next -= 1
                    st.rate_limited += 1
                    limited = True
                else:
                    limited = False
            if limited:
                return self._error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")
            if model not in st.models:
                return self._error(404, "NOT_FOUND", f"models/{model} is not found for API version {m.group(1)}")
            req = json.loads(body or b"{}")
            parts = [p for c in req.get("contents", []) for p in c.get("parts", [])]
            uris = [(p.get("fileData") or p.get("file_data") or {}).get("fileUri")
                    or (p.get("fileData") or p.get("file_data") or {}).get("file_uri") for p in parts]
            uris = [u for u in uris if u]
            with st.lock:
                st.generate_calls.append({"model": model, "parts": parts, "file_uris": uris})
                known = [f for f in st.files.values() if f["uri"] in uris]
            if not known:
                return self._error(400, "INVALID_ARGUMENT", "request has no file part that refers to an uploaded file")
            if any(f["state"] != "ACTIVE" for f in known):
                return self._error(400, "FAILED_PRECONDITION", "The file is not in an ACTIVE state.")
            text = caption_for(known[0]["sha256Hash"])
            return self._json(200, {
                "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP",
                                "index": 0}],
                "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 30, "totalTokenCount": 330},
                "modelVersion": model,
            })
        self._error(404, "NOT_FOUND", f"no route {path}")

    def _file_id(self) -> str | None:
        """The id of `/<version>/files/<id>` once the caller is authorised; None when answered already."""
        path = self.path.split("?")[0]
        m = re.fullmatch(r"/([^/]+)/files/([0-9a-f]+)", path)
        if m is None:
            self._error(404, "NOT_FOUND", f"no route {path}")
            return None
        return m.group(2) if self._authorized() else None

    def do_GET(self) -> None:  # noqa: N802
        st = self.state
        if (file_id := self._file_id()) is None:
            return
        with st.lock:
            f = st.files.get(file_id)
            if f is None:
                return self._error(404, "NOT_FOUND", "file not found")
            f["_polls"] += 1
            if f["state"] == "PROCESSING" and f["_polls"] >= st.processing_polls:
                f["state"] = "FAILED" if f["_fail"] else "ACTIVE"
                if f["_fail"]:
                    f["error"] = {"code": 400, "message": "the video could not be decoded"}
            body = self._file_json(f)
        self._json(200, body)

    def do_DELETE(self) -> None:  # noqa: N802
        st = self.state
        if (file_id := self._file_id()) is None:
            return
        with st.lock:
            st.files.pop(file_id, None)
            st.deleted.append(f"files/{file_id}")
        self._json(200, {})


class FakeGemini(BackgroundServer):
    """`with FakeGemini() as g:` -> a running server; `g.base_url`, `g.state`."""

    def __init__(self, state: GeminiState | None = None) -> None:
        self.state = state or GeminiState()
        super().__init__(_Handler, self.state)
        self.base_url = self.url
