"""A real `tokenmill serve` subprocess on loopback, for tests."""
import os
import socket
import subprocess
import sys
import time

import httpx


def wait_for(condition, timeout=300.0, what="the server never reached the expected state"):
    """Poll state until condition() holds; the generous deadline only catches hangs."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.05)


def rss_kb(pid: int) -> int:
    """A process's resident set (VmRSS), in kB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`tokenmill serve` (or another subcommand, e.g. router) as a subprocess; ready when
    /health says 200."""

    def __init__(self, args: list[str], log_path: str, command: str = "serve", port: int | None = None,
                 env: dict | None = None):
        self.args, self.command = args, command
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "a")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokenmill.cli", command, "--port", str(self.port),
             "--log-level", "warning", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {open(log_path).read()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("server did not become healthy in 120 s")
        self.model = httpx.get(self.url + "/v1/models").json()["data"][0]["id"] \
            if not any(a.startswith("--api-key") for a in args) else None

    def metric(self, name: str, headers=None, label: str = "") -> float:
        """Sum of a metric's samples (those whose labels contain `label`); 0 if none yet."""
        text = httpx.get(self.url + "/metrics", headers=headers or {}).text
        total = 0.0
        for line in text.splitlines():
            if (line.startswith(name + "{") or line.startswith(name + " ")) and label in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self):
        """Die the hard way, mid-request."""
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class UnreadStream:
    """A streaming POST whose client then stops reading: a 4 KB receive buffer, so that the
    server's socket and write buffers fill after a few hundred kB and the rest of the answer
    waits in the server (its mailbox) until the client reads again."""

    def __init__(self, url: str, path: str, body: dict):
        import json
        import socket
        from urllib.parse import urlparse
        u = urlparse(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((u.hostname, u.port))
        data = json.dumps(body).encode()
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)

    def read_all(self, timeout: float = 300) -> str:
        """The response's body (de-chunked), read to its end."""
        import http.client
        self.sock.settimeout(timeout)
        resp = http.client.HTTPResponse(self.sock)
        resp.begin()
        body = resp.read()
        self.sock.close()
        return body.decode("utf-8", "replace")
