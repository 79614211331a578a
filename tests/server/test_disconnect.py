"""A client that goes away aborts its request: its KV blocks are freed at once (checked
through /metrics), in every protocol, streaming or not."""
import time

import httpx
import pytest

LONG = {"max_tokens": 6000, "ignore_eos": True}  # would run for many seconds if not aborted


def wait_idle(server, timeout=3.0) -> float:
    """Seconds until KV usage is back to 0 and nothing runs; fails after timeout."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if server.metric("tokenmill:kv_cache_usage_perc") == 0 and \
                server.metric("tokenmill:num_requests_running") == 0:
            return time.time() - t0
        time.sleep(0.05)
    raise AssertionError(f"KV cache still in use {timeout} s after the client left "
                         f"({server.metric('tokenmill:kv_cache_usage_perc')})")


def busy(server) -> bool:
    return server.metric("tokenmill:kv_cache_usage_perc") > 0


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "go"}],
                              "stream": True, **LONG}),
    ("/v1/completions", {"model": "tiny", "prompt": "go", "stream": True, **LONG}),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "go"}],
                   "options": {"num_predict": 6000, "temperature": 0}}),
    ("/generate_stream", {"inputs": "go", "parameters": {"max_new_tokens": 6000}}),
])
def test_streaming_client_that_leaves(tiny_server, path, body):
    wait_idle(tiny_server)
    aborted = tiny_server.metric("tokenmill:request_success_total", label='"abort"')
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", tiny_server.url + path, json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept open: closing it early would close the connection
            got = 0
            while got < 3:
                got += bool(next(lines).strip())
            assert busy(tiny_server)  # still generating while the client is connected
        # leaving the block closes the connection mid-stream
    wait_idle(tiny_server)
    time.sleep(0.2)
    assert tiny_server.metric("tokenmill:request_success_total", label='"abort"') == aborted + 1


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "go"}], **LONG}),
    ("/api/generate", {"model": "tiny", "prompt": "go", "stream": False, "options": {"num_predict": 6000, "temperature": 0}}),
    ("/generate", {"inputs": "go", "parameters": {"max_new_tokens": 6000}}),
])
def test_non_streaming_client_that_times_out(tiny_server, path, body):
    wait_idle(tiny_server)
    aborted = tiny_server.metric("tokenmill:request_success_total", label='"abort"')
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(tiny_server.url + path, json=body, timeout=httpx.Timeout(30, read=0.7))
    wait_idle(tiny_server)
    time.sleep(0.2)
    assert tiny_server.metric("tokenmill:request_success_total", label='"abort"') == aborted + 1
    # and the server serves the next request normally
    r = httpx.post(tiny_server.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 200
