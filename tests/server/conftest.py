"""Real `tokenmill serve` processes on loopback, on a tiny random model (fast) or the
bundled SmolLM2."""
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args: list[str], log_path: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokenmill.cli", "serve", "--port", str(self.port),
             "--log-level", "warning", *args],
            stdout=self.log, stderr=subprocess.STDOUT)
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
        self.model = httpx.get(self.url + "/v1/models", headers=self.auth()).json()["data"][0]["id"] \
            if "--api-key" not in args else None

    def auth(self):
        return {}

    def metric(self, name: str, headers=None) -> float:
        text = httpx.get(self.url + "/metrics", headers=headers or {}).text
        total = 0.0
        found = False
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        if not found:
            raise KeyError(name)
        return total

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def tiny_server_model(tmp_path_factory):
    """A tiny llama with a long context, so that a request can run for many seconds."""
    from tiny_models import make_hf_model, save_hf_dir
    path = str(tmp_path_factory.mktemp("tiny-server"))
    return save_hf_dir(make_hf_model("llama", seed=7, max_position_embeddings=8192), path)


@pytest.fixture(scope="session")
def tiny_server(tiny_server_model, tmp_path_factory):
    s = Server(["--model", tiny_server_model, "--served-model-name", "tiny",
                "--kv-cache-memory-gib", "0.05"], str(tmp_path_factory.mktemp("logs") / "tiny.log"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def smol_server(tmp_path_factory):
    s = Server(["--max-num-seqs", "32"], str(tmp_path_factory.mktemp("logs") / "smol.log"))
    yield s
    s.stop()
