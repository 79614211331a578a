"""`tokenmill serve --replicas 2`: the whole production picture from one command."""
import time

import httpx

from server_process import Server


def test_serve_replicas_behind_a_router(tiny_router_model, logs):
    s = Server(["--model", tiny_router_model, "--served-model-name", "tiny", "--replicas", "2",
                "--kv-cache-memory-gib", "0.02", "--health-interval", "0.3", "--ledger", str(logs / "rep.db")],
               str(logs / "replicas.log"))
    try:
        deadline = time.time() + 60  # the router is up once one replica is; wait for both
        while httpx.get(s.url + "/health").json()["healthy_backends"] != {"default": 2}:
            assert time.time() < deadline, "the second replica never became healthy"
            time.sleep(0.2)
        backends = set()
        for i in range(4):
            r = httpx.post(s.url + "/v1/chat/completions", timeout=60,
                           json={"model": "tiny", "messages": [{"role": "user", "content": f"hi {i}"}],
                                 "max_tokens": 3})
            assert r.status_code == 200
            backends.add(r.headers["x-tokenmill-backend"])
        assert len(backends) == 2
    finally:
        s.stop()
    assert s.proc.returncode is not None
