"""A client that goes away aborts its request: its KV blocks are freed at once (checked
through /metrics), in every protocol, streaming or not, and from the moment it is admitted: a
request whose client left while it waited in the queue is never prefilled. Every wait here is
on the server's state, with a deadline that only catches hangs."""
import json
import socket

import httpx
import pytest

from server_process import Server, wait_for

LONG = {"max_tokens": 6000, "ignore_eos": True}  # would run for many seconds if not aborted




def idle(server) -> bool:
    return server.metric("tokenmill:kv_cache_usage_perc") == 0 and \
        server.metric("tokenmill:num_requests_running") == 0 and \
        server.metric("tokenmill:num_requests_waiting") == 0


def aborted(server) -> float:
    return server.metric("tokenmill:request_success_total", label='"abort"')


def busy(server) -> bool:
    return server.metric("tokenmill:kv_cache_usage_perc") > 0


def raw_post(server, path, body) -> socket.socket:
    """Send a request and keep the connection: closing the socket is the client leaving."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "go"}],
                              "stream": True, **LONG}),
    ("/v1/completions", {"model": "tiny", "prompt": "go", "stream": True, **LONG}),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "go"}],
                   "options": {"num_predict": 6000, "temperature": 0}}),
    ("/generate_stream", {"inputs": "go", "parameters": {"max_new_tokens": 6000}}),
])
def test_streaming_client_that_leaves(tiny_server, path, body):
    wait_for(lambda: idle(tiny_server))
    before = aborted(tiny_server)
    with httpx.Client(timeout=300) as c:
        with c.stream("POST", tiny_server.url + path, json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept open: closing it early would close the connection
            got = 0
            while got < 3:
                got += bool(next(lines).strip())
            assert busy(tiny_server)  # still generating while the client is connected
        # leaving the block closes the connection mid-stream
    wait_for(lambda: idle(tiny_server) and aborted(tiny_server) == before + 1)


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "go"}], **LONG}),
    ("/api/generate", {"model": "tiny", "prompt": "go", "stream": False, "options": {"num_predict": 6000, "temperature": 0}}),
    ("/generate", {"inputs": "go", "parameters": {"max_new_tokens": 6000}}),
])
def test_non_streaming_client_that_leaves(tiny_server, path, body):
    wait_for(lambda: idle(tiny_server))
    before = aborted(tiny_server)
    sock = raw_post(tiny_server, path, body)
    wait_for(lambda: busy(tiny_server))  # it is generating
    sock.close()
    wait_for(lambda: idle(tiny_server) and aborted(tiny_server) == before + 1)
    # and the server serves the next request normally
    r = httpx.post(tiny_server.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2},
                   timeout=300)
    assert r.status_code == 200


@pytest.fixture(scope="module")
def one_seq_server(tiny_server_model, tmp_path_factory):
    s = Server(["--model", tiny_server_model, "--served-model-name", "tiny", "--max-num-seqs", "1",
                "--kv-cache-memory-gib", "0.05"], str(tmp_path_factory.mktemp("logs") / "one-seq.log"))
    yield s
    s.stop()


@pytest.mark.parametrize("path,stream", [("/v1/chat/completions", True), ("/v1/chat/completions", False),
                                         ("/api/chat", True)])
def test_client_that_leaves_while_queued_is_never_prefilled(one_seq_server, path, stream):
    s = one_seq_server
    wait_for(lambda: idle(s))
    generated = s.metric("tokenmill:generation_tokens_total")
    runner = raw_post(s, "/v1/completions", {"model": "tiny", "prompt": "go", "stream": True, **LONG})
    # running and past its prefill: its prompt tokens are counted
    wait_for(lambda: s.metric("tokenmill:generation_tokens_total") >= generated + 2)
    prompt_tokens = s.metric("tokenmill:prompt_tokens_total")
    big = "word " * 400  # ~2,000 tokens with the byte-level tokenizer
    body = {"model": "tiny", "messages": [{"role": "user", "content": big}], "stream": stream,
            "max_tokens": 5} if path.startswith("/v1") else \
        {"model": "tiny", "messages": [{"role": "user", "content": big}], "options": {"num_predict": 5}}
    queued = raw_post(s, path, body)
    wait_for(lambda: s.metric("tokenmill:num_requests_waiting") == 1)
    queued.close()  # leaves while it waits for the running request
    wait_for(lambda: s.metric("tokenmill:num_requests_waiting") == 0, what="the abandoned request stayed queued")
    assert s.metric("tokenmill:num_requests_running") == 1  # the runner is untouched
    runner.close()
    wait_for(lambda: idle(s))
    assert s.metric("tokenmill:prompt_tokens_total") == prompt_tokens  # its prompt was never computed


def test_a_request_still_running_is_not_affected_by_others_leaving(one_seq_server):
    """The counterpart: a client that stays gets its whole answer."""
    s = one_seq_server
    wait_for(lambda: idle(s))
    r = httpx.post(s.url + "/v1/completions", json={"model": "tiny", "prompt": "go", "max_tokens": 20,
                                                     "ignore_eos": True}, timeout=300)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 20
