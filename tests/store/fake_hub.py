"""A Hugging Face Hub on loopback, serving repositories the test makes: the tree listing,
HEAD and ranged GET of /resolve/, as huggingface_hub calls them. `cut_after` makes downloads
fail midway (the body stops after that many bytes, and every later request for the file is
dropped) until it is set back to None; `ranges` records every Range header asked for."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, str]] = {}   # "owner/repo" -> {filename: local path}
        self.cut_after: int | None = None
        self.cut_done = False
        self.ranges: list[str | None] = []
        self.bytes_sent = 0
        self._digests: dict[str, str] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                hub._serve(self, body=True)

            def do_HEAD(self):
                hub._serve(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo: str, files: dict[str, str]) -> None:
        self.repos[repo] = files

    def close(self):
        self.server.shutdown()

    def sha256(self, path: str) -> str:
        if path in self._digests:
            return self._digests[path]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        self._digests[path] = h.hexdigest()
        return self._digests[path]

    def _serve(self, h, body: bool):
        path = unquote(urlparse(h.path).path)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and "tree" in parts:
            repo = "/".join(parts[2:parts.index("tree")])
            files = self.repos.get(repo)
            if files is None:
                return self._json(h, 404, {"error": "Repository not found"})
            return self._json(h, 200, [{"type": "file", "path": f, "size": os.path.getsize(p),
                                        "oid": "0" * 40} for f, p in files.items()])
        if "resolve" in parts:
            i = parts.index("resolve")
            repo, filename = "/".join(parts[:i]), "/".join(parts[i + 2:])
            local = (self.repos.get(repo) or {}).get(filename)
            if local is None:
                return self._json(h, 404, {"error": "Entry not found"})
            return self._file(h, local, body)
        return self._json(h, 404, {"error": "not found"})

    def _json(self, h, status, obj):
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _file(self, h, local: str, body: bool):
        size = os.path.getsize(local)
        start = 0
        rng = h.headers.get("Range")
        if body:
            self.ranges.append(rng)
            if self.cut_after is not None and self.cut_done:  # the network is down for this file
                h.close_connection = True
                return
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
        h.send_response(206 if start else 200)
        h.send_header("Content-Length", str(size - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        h.send_header("ETag", f'"{self.sha256(local)}"')
        h.send_header("X-Repo-Commit", "1" * 40)
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        if not body:
            return
        with open(local, "rb") as f:
            f.seek(start)
            left = size - start
            if self.cut_after is not None:
                left = min(left, self.cut_after)
                self.cut_done = True
            while left > 0:
                chunk = f.read(min(left, 1 << 16))
                h.wfile.write(chunk)
                self.bytes_sent += len(chunk)
                left -= len(chunk)
        if self.cut_after is not None:
            h.close_connection = True
