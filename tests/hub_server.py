"""A small local stand-in for the Hugging Face Hub's download API, for tests of the real client.

It serves model repositories in the Hub's layout and with its headers, on 127.0.0.1 only:

    HEAD/GET /{repo}/resolve/{revision}/{file}    X-Repo-Commit, ETag, Content-Length; Range -> 206
    GET /api/models/{repo}[/revision/{revision}]  {"id", "sha", "siblings": [{"rfilename"}], ...}

and answers like the Hub does when something is wrong: 401 + X-Error-Code RepoNotFound for a
missing repository or a private one without its token, GatedRepo for a gated one, a bare 401
"Invalid credentials" for a wrong token,
404 + RevisionNotFound / EntryNotFound (with X-Repo-Commit) for a missing revision or file.
`faults` makes the next GETs of a file fail: "cut" sends half the body and closes the connection,
an integer answers with that HTTP status. Every request is recorded in `requests`.
The server runs in a daemon thread, and shuts itself down after `lifetime` seconds if a test
never stops it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]]        # commit sha (40 hex) -> {file name: content}
    refs: dict[str, str]                         # branch or tag -> commit sha
    private: bool = False
    gated: bool = False


@dataclass
class FakeHub:
    token: str = "hf_test_token"
    repos: dict[str, Repo] = field(default_factory=dict)
    faults: dict[str, list] = field(default_factory=dict)  # file name -> ["cut" | status, ...], one per GET
    requests: list[tuple[str, str, dict]] = field(default_factory=list)

    def add(self, repo: str, files: dict[str, bytes], ref: str = "main", *, private: bool = False,
            gated: bool = False) -> str:
        """Commit `files` (the whole tree) to `repo` under `ref` -> the commit sha."""
        sha = hashlib.sha1(repo.encode() + ref.encode() + b"".join(sorted(files.values()))).hexdigest()
        entry = self.repos.setdefault(repo, Repo({}, {}, private, gated))
        entry.commits[sha] = dict(files)
        entry.refs[ref] = sha
        return sha

    def downloads(self, name: str) -> int:
        """GET requests of files called `name`."""
        return sum(1 for method, path, _ in self.requests if method == "GET" and path.endswith("/" + name))

    def serve(self, lifetime: float = 120.0):
        """Start serving -> (base URL, stop function)."""
        hub = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that stops reading cannot hold a thread for long

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        timer = threading.Timer(lifetime, server.shutdown)
        timer.daemon = True
        timer.start()

        def stop():
            timer.cancel()
            server.shutdown()
            server.server_close()
        return f"http://127.0.0.1:{server.server_address[1]}", stop

    # --- the Hub's answers ----------------------------------------------------------------------

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path, dict(h.headers)))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and (len(parts) == 4 or len(parts) >= 6 and parts[4] == "revision"):
            return self._info(h, "/".join(parts[2:4]), "/".join(parts[5:]) or "main")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file(h, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
        self._send(h, 404, b"not found")

    def _find(self, h, repo_id: str, revision: str):
        """-> (repo, sha), or None once an error answer was sent."""
        repo = self.repos.get(repo_id)
        authorised = h.headers.get("Authorization") == f"Bearer {self.token}"
        if h.headers.get("Authorization") and not authorised:
            return self._send(h, 401, b"Invalid credentials",
                              {"X-Error-Message": "Invalid credentials in Authorization header"})
        if repo is None or (repo.private and not authorised):
            return self._send(h, 401, b"Repository not found", {"X-Error-Code": "RepoNotFound"})
        if repo.gated and not authorised:
            return self._send(h, 401, b"gated", {"X-Error-Code": "GatedRepo"})
        sha = revision if revision in repo.commits else repo.refs.get(revision)
        if sha is None:
            return self._send(h, 404, b"Invalid rev id", {"X-Error-Code": "RevisionNotFound"})
        return repo, sha

    def _info(self, h, repo_id: str, revision: str) -> None:
        found = self._find(h, repo_id, revision)
        if found:
            repo, sha = found
            info = {"id": repo_id, "sha": sha, "private": repo.private, "gated": repo.gated,
                    "siblings": [{"rfilename": n} for n in sorted(repo.commits[sha])]}
            self._send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"})

    def _file(self, h, repo_id: str, revision: str, name: str, body: bool) -> None:
        found = self._find(h, repo_id, revision)
        if not found:
            return
        repo, sha = found
        content = repo.commits[sha].get(name)
        if content is None:
            return self._send(h, 404, b"Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(content).hexdigest()}"', "Accept-Ranges": "bytes"}
        fault = self.faults.get(name, []).pop(0) if body and self.faults.get(name) else None
        if isinstance(fault, int):
            return self._send(h, fault, b"server error")
        start = int(h.headers["Range"].split("=")[1].split("-")[0]) if body and h.headers.get("Range") else 0
        part = content[start:]
        h.send_response(206 if start else 200)
        for key, value in {**headers, "Content-Length": str(len(part))}.items():
            h.send_header(key, value)
        h.end_headers()
        if body:
            h.wfile.write(part[:len(part) // 2] if fault == "cut" else part)
            h.wfile.flush()
            if fault == "cut":
                h.close_connection = True

    @staticmethod
    def _send(h, status: int, body: bytes, headers: dict | None = None) -> None:
        h.send_response(status)
        for key, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
            h.send_header(key, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
