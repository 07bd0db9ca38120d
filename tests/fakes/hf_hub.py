"""A Hugging Face Hub stand-in that the real `huggingface_hub` client can create repos and commit to.

Routes, as huggingface_hub 2.4.0 calls them (huggingface/huggingface_hub `src/huggingface_hub/hf_api.py:2262`
whoami, `:4663` create_repo, `:4023` tree; `_commit_api.py:764` preupload, `:1056` commit;
`utils/_http.py:871-888` X-Error-Code GatedRepo): `GET /api/whoami-v2`, `POST /api/repos/create`
(409 with the url when it exists), `POST /api/{type}s/{repo}/preupload/{rev}` (every file
"regular", so content is inlined in the commit and no LFS/Xet is involved),
`POST /api/{type}s/{repo}/commit/{rev}` (NDJSON), and downloads at
`/[datasets/]{repo}/resolve/{rev}/{path}` (GET, and HEAD with ETag / X-Repo-Commit as
`hf_hub_download` needs), repo info at `GET /api/{type}s/{repo}[/revision/{rev}]`
(401 for a private repo without a valid token, 404 for a missing one) and the file listing
`snapshot_download` reads at `GET /api/{type}s/{repo}/tree/{rev}?recursive=true`. A repo with
`"gated": True` answers those reads 403 with `X-Error-Code: GatedRepo`, as the Hub does before
the account has accepted the licence. `downloads` records each file served; `resolve_delay_s`
slows every download down. Tokens other than `valid_tokens` get 401;
`fail_commits` makes the next N commits answer 500.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote

from tests.fakes.threaded_http import BackgroundServer, read_body, reply

_REPO_API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)/(preupload|commit)/([^/?]+)")
_REPO_INFO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/?]+)(?:/revision/[^/?]+)?/?(?:\?.*)?$")
_TREE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)/tree/([^/?]+)(?:/[^?]*)?(?:\?.*)?$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+?)(?:\?.*)?$")


@dataclass
class HubState:
    valid_tokens: dict[str, str] = field(default_factory=lambda: {"hf_testwritetoken0000": "tester"})
    repos: dict[str, dict] = field(default_factory=dict)  # "type:owner/name" -> {"private", "files": {path: bytes}}
    commits: list[dict] = field(default_factory=list)
    fail_commits: int = 0
    downloads: list[str] = field(default_factory=list)  # "owner/name:path" per GET of a file
    resolve_delay_s: float = 0.0
    base_url: str = ""

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        return self.repos[f"{repo_type}:{repo_id}"]["files"]


class _Hub(BaseHTTPRequestHandler):
    state: HubState

    def log_message(self, *args):
        pass

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        return self.state.valid_tokens.get(token)

    def _json(self, status: int, data: dict) -> None:
        headers = {"X-Error-Message": data["error"]} if status >= 400 and "error" in data else {}
        if self.command == "HEAD":  # status and headers only: a body would corrupt the kept-alive connection
            self.send_response(status)
            for key, value in {**headers, "Content-Length": "0"}.items():
                self.send_header(key, value)
            return self.end_headers()
        reply(self, status, json.dumps(data), "application/json", headers)

    def do_GET(self):
        st = self.state
        if self.path.startswith("/api/whoami-v2"):
            user = self._user()
            if not user:
                return self._json(401, {"error": "Invalid credentials in Authorization header"})
            return self._json(200, {"type": "user", "name": user, "auth": {"accessToken": {"role": "write"}}})
        m = _REPO_INFO.match(self.path)
        if m:
            return self._repo_info(m.group(1)[:-1], m.group(2))
        m = _TREE.match(self.path)
        if m:
            return self._tree(m.group(1)[:-1], m.group(2))
        m = _RESOLVE.match(self.path)
        if m:
            kind = {"datasets": "dataset", "spaces": "space"}.get(m.group(1) or "", "model")
            repo = st.repos.get(f"{kind}:{m.group(2)}")
            path = unquote(m.group(4))
            if repo is None or path not in repo["files"]:
                return self._json(404, {"error": "Entry not found"})
            if repo["private"] and not self._user():
                return self._json(401, {"error": "Repository not found"})
            if repo.get("gated"):
                return self._gated(m.group(2))
            data = repo["files"][path]
            blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's id, the Hub's ETag
            headers = {"ETag": f'"{blob_id}"', "X-Repo-Commit": repo.get("sha") or "0" * 40}
            if self.command == "HEAD":
                self.send_response(200)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                return self.end_headers()
            st.downloads.append(f"{m.group(2)}:{path}")
            time.sleep(st.resolve_delay_s)
            return reply(self, 200, data, "application/octet-stream", headers)
        self._json(404, {"error": "not found"})

    def _gated(self, repo_id: str) -> None:
        message = (f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                   "to access it. Please log in.")
        reply(self, 403, json.dumps({"error": message}), "application/json",
              {"X-Error-Code": "GatedRepo", "X-Error-Message": message})

    do_HEAD = do_GET  # hf_hub_download asks for ETag and commit with a HEAD first

    def _repo_info(self, kind: str, repo_id: str) -> None:
        """`repo_info()`: 401 for a private repo without a valid token, as the Hub hides private repos."""
        repo = self.state.repos.get(f"{kind}:{repo_id}")
        if repo is None or (repo["private"] and not self._user()):
            status = 404 if self._user() else 401
            return reply(self, status, json.dumps({"error": "Repository not found"}), "application/json",
                         {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        self._json(200, {"id": repo_id, "private": repo["private"], "sha": repo.get("sha") or "0" * 40,
                         "siblings": [{"rfilename": p} for p in sorted(repo["files"])]})

    def _tree(self, kind: str, repo_id: str) -> None:
        """The recursive listing: every file with its git blob id and size, and the folders above them."""
        repo = self.state.repos.get(f"{kind}:{repo_id}")
        if repo is None or (repo["private"] and not self._user()):
            return self._json(404 if self._user() else 401, {"error": "Repository not found"})
        if repo.get("gated"):
            return self._gated(repo_id)
        entries, folders = [], set()
        for path, data in sorted(repo["files"].items()):
            folders.update("/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1))
            entries.append({"type": "file", "path": path, "size": len(data),
                            "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()})
        entries += [{"type": "directory", "path": d, "size": 0, "oid": "0" * 40} for d in sorted(folders)]
        reply(self, 200, json.dumps(entries), "application/json")

    def do_POST(self):
        st = self.state
        body = read_body(self)
        user = self._user()
        if not user:
            return self._json(401, {"error": "Invalid credentials in Authorization header"})
        if self.path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data.get('organization') or user}/{data['name']}"
            kind = data.get("type") or "model"
            prefix = "" if kind == "model" else f"{kind}s/"
            url = f"{st.base_url}/{prefix}{repo_id}"
            key = f"{kind}:{repo_id}"
            if key in st.repos:
                return self._json(409, {"error": "You already created this repo", "url": url})
            st.repos[key] = {"private": data.get("visibility") == "private" or bool(data.get("private")),
                             "files": {}}
            return self._json(200, {"url": url, "name": repo_id})
        m = _REPO_API.match(self.path)
        if not m:
            return self._json(404, {"error": "not found"})
        kind, repo_id, action = m.group(1)[:-1], m.group(2), m.group(3)
        repo = st.repos.get(f"{kind}:{repo_id}")
        if repo is None:
            return self._json(404, {"error": "Repository not found"})
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                              for f in files]})
        if st.fail_commits > 0:
            st.fail_commits -= 1
            return self._json(500, {"error": "Internal Error - We're working hard to fix this as soon as possible!"})
        added, summary = {}, ""
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "header":
                summary = item["value"].get("summary", "")
            elif item["key"] == "file":
                added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] in ("lfsFile",):
                return self._json(400, {"error": "this stand-in only takes regular files"})
        repo["files"].update(added)
        oid = repo["sha"] = secrets.token_hex(20)
        st.commits.append({"repo_id": repo_id, "repo_type": kind, "summary": summary, "files": sorted(added),
                           "oid": oid})
        prefix = "" if kind == "model" else f"{kind}s/"
        return self._json(200, {"commitUrl": f"{st.base_url}/{prefix}{repo_id}/commit/{oid}", "commitOid": oid})


def hub(state: HubState | None = None) -> BackgroundServer:
    state = state or HubState()
    server = BackgroundServer(_Hub, state)
    state.base_url = server.url
    return server
