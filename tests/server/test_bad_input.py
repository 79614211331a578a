"""Bad input gets the right 4xx, in the client's own error shape, and the server keeps serving."""
import threading

import httpx
import openai
import pytest

from server_process import Server, wait_for

CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]




def post(server, path, **kw):
    return httpx.post(server.url + path, timeout=30, **kw)


def openai_error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize("body,status,needle", [
    ({"model": "tiny", "messages": MSGS, "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny", "messages": MSGS, "temperature": 5}, 400, "temperature"),
    ({"model": "tiny", "messages": MSGS, "top_p": 0}, 400, "top_p"),
    ({"model": "tiny", "messages": MSGS, "max_tokens": -3}, 400, "max_tokens"),
    ({"model": "tiny", "messages": MSGS, "n": 0}, 400, "n must be"),
    ({"model": "tiny", "messages": MSGS, "logit_bias": {"99999999": 1}}, 400, "out of range"),
    ({"model": "tiny", "messages": MSGS, "logit_bias": {"abc": 1}}, 400, "token ids"),
    ({"model": "tiny", "messages": []}, 400, "messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ({"model": "tiny", "messages": "hello"}, 400, "messages"),
    ({"messages": MSGS}, 400, "model"),
    ({"model": "nope", "messages": MSGS}, 404, "nope"),
    ({"model": "tiny", "messages": MSGS, "max_tokens": 100000}, 400, "maximum context length"),
    ({"model": "tiny", "messages": MSGS, "stop": [f"s{i}" for i in range(17)]}, 400, "at most 16"),
    ({"model": "tiny", "messages": MSGS, "stop": "x" * 257}, 400, "256 characters"),
    ({"model": "tiny", "messages": MSGS, "stop_token_ids": list(range(65))}, 400, "at most 64"),
])
def test_openai_bad_parameters(tiny_server, body, status, needle):
    err = openai_error(post(tiny_server, CHAT, json=body), status)
    assert needle in err["message"]


def test_malformed_json_and_wrong_body(tiny_server):
    for content in (b"{not json", b"[1, 2]", b""):
        err = openai_error(post(tiny_server, CHAT, content=content,
                                headers={"content-type": "application/json"}), 400)
        assert err["type"] == "invalid_request_error"
    assert post(tiny_server, "/api/chat", content=b"{oops").json()["error"].startswith("the request body")
    r = post(tiny_server, "/generate", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()) == {"error", "error_type"}


def test_over_long_prompt_in_each_protocol(tiny_server):
    long = "word " * 9000  # > 8192 tokens of context
    openai_error(post(tiny_server, CHAT, json={"model": "tiny", "messages": [{"role": "user", "content": long}]}), 400)
    openai_error(post(tiny_server, "/v1/completions", json={"model": "tiny", "prompt": long}), 400)
    r = post(tiny_server, "/api/generate", json={"model": "tiny", "prompt": long})
    assert r.status_code == 400 and "context length" in r.json()["error"]
    r = post(tiny_server, "/generate", json={"inputs": long})
    assert r.status_code == 400 and "context length" in r.json()["error"]


def test_unknown_route_and_model(tiny_server):
    err = openai_error(httpx.get(tiny_server.url + "/v1/nothing"), 404)
    assert "/v1/nothing" in err["message"]
    r = post(tiny_server, "/api/show", json={"model": "ghost"})
    assert r.status_code == 404 and "ghost" in r.json()["error"]


def test_body_too_large(tiny_server):
    huge = b'{"model": "tiny", "prompt": "' + b"a" * (5 * 2**20) + b'"}'
    openai_error(post(tiny_server, "/v1/completions", content=huge,
                      headers={"content-type": "application/json"}), 413)


def test_still_serving_after_bad_input(tiny_server):
    r = post(tiny_server, CHAT, json={"model": "tiny", "messages": MSGS, "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


@pytest.fixture(scope="module")
def guarded_server(tiny_server_model, tmp_path_factory):
    """API key, one running request at a time, at most one waiting."""
    s = Server(["--model", tiny_server_model, "--served-model-name", "tiny", "--api-key", "sekret",
                "--max-num-seqs", "1", "--max-queue", "1", "--kv-cache-memory-gib", "0.05"],
               str(tmp_path_factory.mktemp("logs") / "guarded.log"))
    yield s
    s.stop()


def test_api_key(guarded_server):
    s = guarded_server
    assert httpx.get(s.url + "/health").status_code == 200  # open route
    openai_error(httpx.get(s.url + "/v1/models"), 401)
    openai_error(httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert httpx.get(s.url + "/api/tags").json()["error"]  # Ollama shape
    ok = httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer sekret"})
    assert ok.status_code == 200
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_queue_overflow_is_429_with_retry_after(guarded_server):
    """One request runs, one waits; a third is refused. Waits on the server's own state, never
    on time: the held requests stream until their clients leave."""
    s = guarded_server
    headers = {"Authorization": "Bearer sekret"}
    long_req = {"model": "tiny", "messages": MSGS, "max_tokens": 4000, "ignore_eos": True, "stream": True}
    release = [threading.Event(), threading.Event()]
    got_tokens = []

    def hold(i):
        with httpx.stream("POST", s.url + CHAT, json=long_req, headers=headers, timeout=600) as r:
            lines = r.iter_lines()
            next(lines)
            got_tokens.append((i, r.status_code))
            release[i].wait(600)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(2)]
    threads[0].start()
    wait_for(lambda: s.metric("tokenmill:num_requests_running", headers) == 1)
    threads[1].start()
    wait_for(lambda: s.metric("tokenmill:num_requests_waiting", headers) == 1)
    r = httpx.post(s.url + CHAT, json=dict(long_req, stream=False), headers=headers, timeout=30)
    err = openai_error(r, 429)
    assert "queue is full" in err["message"] and r.headers["retry-after"] == "1"
    release[0].set()  # the first client leaves; the waiting one gets its place and streams
    wait_for(lambda: len(got_tokens) == 2)
    release[1].set()
    for t in threads:
        t.join()
    assert sorted(got_tokens) == [(0, 200), (1, 200)]  # the accepted ones were served
    wait_for(lambda: s.metric("tokenmill:kv_cache_usage_perc", headers) == 0)
    r = httpx.post(s.url + CHAT, json={"model": "tiny", "messages": MSGS, "max_tokens": 2},
                   headers=headers, timeout=60)
    assert r.status_code == 200
    assert s.metric('tokenmill:http_responses_total{status="429"}', headers) >= 1
