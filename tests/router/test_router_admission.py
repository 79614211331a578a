"""Router admission and cancellation: tokens-per-minute reserved when a request is admitted
(so concurrent requests cannot all slip under the limit), a non-streaming client that leaves
cancels its upstream request, and Ollama / TGI pass through the router."""
import asyncio
import json
import socket

import httpx
import ollama
from huggingface_hub import InferenceClient

from router_helpers import router
from server_process import wait_for




def test_tokens_per_minute_are_reserved_at_admission(replicas, logs):
    r = router(["--backend", replicas[2].url, "--api-key", "dan=key-d", "--rate-limit-tpm", "250",
                "--ledger", str(logs / "tpm.db"), "--no-cache"], logs, "tpm")
    try:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100}

        async def burst():
            async with httpx.AsyncClient(timeout=300) as c:
                return await asyncio.gather(*(c.post(r.url + "/v1/chat/completions", json=body,
                                                     headers={"Authorization": "Bearer key-d"}) for _ in range(6)))
        codes = sorted(x.status_code for x in asyncio.run(burst()))
        # each reserves ~100 tokens: two fit under 250, the rest are refused at once (a finished
        # one settles to its real count, prompt + 100, which frees nothing within the minute)
        assert codes == [200, 200, 429, 429, 429, 429], codes
    finally:
        r.stop()


def test_non_streaming_client_that_leaves_cancels_upstream(replicas, logs):
    backend = replicas[1]
    r = router(["--backend", backend.url, "--ledger", str(logs / "cancel.db"), "--no-cache"], logs, "cancel")
    try:
        wait_for(lambda: backend.metric("tokenmill:num_requests_running") == 0)
        aborted = backend.metric("tokenmill:request_success_total", label='"abort"')
        data = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "go"}],
                           "max_tokens": 3000, "ignore_eos": True}).encode()
        sock = socket.create_connection(("127.0.0.1", r.port))
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        wait_for(lambda: backend.metric("tokenmill:kv_cache_usage_perc") > 0)  # generating upstream
        sock.close()
        wait_for(lambda: backend.metric("tokenmill:request_success_total", label='"abort"') == aborted + 1
                 and backend.metric("tokenmill:num_requests_running") == 0)
    finally:
        r.stop()


def test_ollama_and_tgi_through_the_router(replicas, logs):
    r = router(["--backend", replicas[0].url, "--ledger", str(logs / "protocols.db"), "--no-cache"], logs, "protocols")
    try:
        o = ollama.Client(host=r.url)
        whole = o.chat(model="tiny", messages=[{"role": "user", "content": "hi"}],
                       options={"num_predict": 5, "temperature": 0}, stream=False)
        parts = list(o.chat(model="tiny", messages=[{"role": "user", "content": "hi"}],
                            options={"num_predict": 5, "temperature": 0}, stream=True))
        assert whole.eval_count == 5 and parts[-1].done
        assert "".join(p.message.content for p in parts) == whole.message.content
        assert [m.model for m in o.list().models] == ["tiny"]
        tgi = InferenceClient(base_url=r.url)
        text = tgi.text_generation("hello", max_new_tokens=6)
        assert "".join(tgi.text_generation("hello", max_new_tokens=6, stream=True)) == text
    finally:
        r.stop()
