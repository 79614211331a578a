"""Tenants kept apart at the router: keys parsed without ambiguity, the gate before the body,
no answer or prefix-cache block shared across tenants, every route billed and limited, a
client that hangs up billed what it was sent."""
import json
import socket
import subprocess
import sys
import time

import httpx
import pytest

from router_helpers import router
from server_process import rss_kb, wait_for

CHAT = "/v1/chat/completions"


def ledger(db, where="1=1"):
    import sqlite3
    return sqlite3.connect(db).execute(
        f"SELECT api_key, prompt_tokens, completion_tokens, status FROM requests WHERE {where} ORDER BY ts").fetchall()


@pytest.fixture(scope="module")
def tenants(replicas, logs, tmp_path_factory):
    keyfile = tmp_path_factory.mktemp("keys") / "keys.txt"
    keyfile.write_text("# name key\nalice c2VjcmV0LWtleQ==\nbob YW5vdGhlci1rZXk=\n")
    db = str(logs / "tenants.db")
    r = router(["--backend", replicas[2].url, "--api-key-file", str(keyfile), "--api-key", "carol=k=c=",
                "--rate-limit-rpm", "1000", "--ledger", db], logs, "tenants")
    yield r, db
    r.stop()


def ask(r, key, content="Say something.", **extra):
    return httpx.post(r.url + CHAT, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60,
                      json={"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 3,
                            "temperature": 0, **extra})


def test_a_bare_base64_key_is_refused_at_start_not_registered_empty(logs):
    for spec in ("c2VjcmV0LWtleQ==", "name=", "="):
        done = subprocess.run([sys.executable, "-m", "tokenmill.cli", "router", "--backend", "http://127.0.0.1:9",
                               "--api-key", spec], capture_output=True, text=True, timeout=120)
        assert done.returncode != 0, spec
        assert "--api-key" in done.stderr + done.stdout


def test_keys_with_equals_signs_open_the_router_and_nothing_else_does(tenants):
    r, _ = tenants
    assert ask(r, None).status_code == 401
    assert ask(r, "").status_code == 401
    assert ask(r, "=").status_code == 401
    assert ask(r, "c2VjcmV0LWtleQ").status_code == 401  # the key without its padding
    for key in ("c2VjcmV0LWtleQ==", "YW5vdGhlci1rZXk=", "k=c="):
        assert ask(r, key).status_code == 200, key


def test_no_answer_crosses_tenants_through_the_cache(tenants):
    r, _ = tenants
    content = f"What is two and two? {time.time()}"
    a1 = ask(r, "c2VjcmV0LWtleQ==", content)
    b1 = ask(r, "YW5vdGhlci1rZXk=", content)
    a2 = ask(r, "c2VjcmV0LWtleQ==", content)
    assert [x.headers["x-tokenmill-cache"] for x in (a1, b1, a2)] == ["miss", "miss", "hit"]
    assert b1.json()["id"] != a1.json()["id"] and a2.json()["id"] == a1.json()["id"]
    # a `user` is part of what is asked: another user's answer is not shared either
    assert ask(r, "c2VjcmV0LWtleQ==", content, user="someone").headers["x-tokenmill-cache"] == "miss"


def test_tenants_do_not_share_prefix_cache_blocks(tenants, replicas):
    r, _ = tenants
    backend = replicas[2]
    content = "A long shared preamble about many things. " * 12 + str(time.time())
    ask(r, "c2VjcmV0LWtleQ==", content, seed=1, temperature=0.5)  # seeded, not cached by the router
    hits = backend.metric("tokenmill:prefix_cache_hits_total")
    ask(r, "YW5vdGhlci1rZXk=", content, seed=2, temperature=0.5)
    assert backend.metric("tokenmill:prefix_cache_hits_total") == hits  # another tenant: no block found
    ask(r, "c2VjcmV0LWtleQ==", content, seed=3, temperature=0.5)
    assert backend.metric("tokenmill:prefix_cache_hits_total") > hits  # the same tenant: found


def _huge_body_rss_growth(r, headers: str) -> tuple[bytes, int]:
    """Send 1 GB's headers and up to 64 MB of it; (the reply, RSS growth of the router in kB)."""
    before = rss_kb(r.proc.pid)
    s = socket.create_connection(("127.0.0.1", r.port))
    s.sendall((f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
               f"Content-Length: {2**30}\r\n\r\n").encode())
    chunk = b"x" * 2**20
    s.settimeout(0.05)
    reply = b""
    try:
        for _ in range(64):
            try:
                s.sendall(chunk)
            except OSError:
                break  # the router closed the connection: it did not want the body
            try:
                reply += s.recv(65536)
            except (socket.timeout, BlockingIOError):
                pass
            if reply:
                break
        s.settimeout(30)
        while b"\r\n\r\n" not in reply:
            more = s.recv(65536)
            if not more:
                break
            reply += more
    finally:
        s.close()
    return reply, rss_kb(r.proc.pid) - before


def test_a_huge_body_is_refused_before_it_is_read(tenants):
    r, _ = tenants
    reply, grown = _huge_body_rss_growth(r, "")
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    assert grown < 32 * 1024, grown
    reply, grown = _huge_body_rss_growth(r, "Authorization: Bearer c2VjcmV0LWtleQ==\r\n")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert grown < 32 * 1024, grown


def test_passthrough_routes_are_limited_and_recorded(replicas, logs):
    db = str(logs / "passthrough.db")
    r = router(["--backend", replicas[2].url, "--api-key", "dave=key-d", "--rate-limit-rpm", "3",
                "--ledger", db], logs, "passthrough")
    try:
        h = {"Authorization": "Bearer key-d"}
        codes = [httpx.post(r.url + "/tokenize", headers=h, timeout=30,
                            json={"model": "tiny", "prompt": "one two three"}).status_code for _ in range(3)]
        codes.append(httpx.get(r.url + "/api/tags", headers=h, timeout=30).status_code)
        assert codes == [200, 200, 200, 429]
        count = httpx.post(replicas[2].url + "/tokenize", json={"model": "tiny", "prompt": "one two three"}).json()["count"]
        wait_for(lambda: len(ledger(db)) >= 3, 60, "the ledger never got the tokenize rows")
        assert [(k, p) for k, p, _, _ in ledger(db)] == [("dave", count)] * 3
    finally:
        r.stop()


def test_tgi_prompt_tokens_are_billed(tenants, replicas):
    r, db = tenants
    before = len(ledger(db, "api_key = 'carol'"))
    resp = httpx.post(r.url + "/generate", headers={"Authorization": "Bearer k=c="}, timeout=60,
                      json={"inputs": "The quick brown fox", "parameters": {"max_new_tokens": 2, "details": True}})
    assert resp.status_code == 200
    count = httpx.post(replicas[2].url + "/tokenize", json={"model": "tiny", "prompt": "The quick brown fox"}).json()["count"]
    wait_for(lambda: len(ledger(db, "api_key = 'carol'")) > before, 60, "no ledger row")
    assert ledger(db, "api_key = 'carol'")[-1][1:3] == (count, 2)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/v1/messages", "/v1/responses"])
def test_a_hang_up_after_n_tokens_is_billed_n(tenants, path):
    r, db = tenants
    n = 6
    before = len(ledger(db, "api_key = 'bob'"))
    # greedy: the tiny model's EOS logit is zeroed, so only a greedy answer surely runs past what
    # the client reads (a sampled EOS soon after the hang-up would end the answer as a 200)
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"Count {path}"}], "stream": True,
            "temperature": 0}
    if path.startswith("/api/"):
        body["options"] = {"num_predict": 200, "temperature": 0}
        del body["temperature"]
    elif path == "/v1/responses":
        body = {"model": "tiny", "input": f"Count {path}", "max_output_tokens": 200, "stream": True,
                "temperature": 0}
    else:
        body["max_tokens"] = 200
    got = 0
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", r.url + path, json=body, headers={"Authorization": "Bearer YW5vdGhlci1rZXk="}) as resp:
            for line in resp.iter_lines():
                if path.startswith("/api/"):
                    got += bool(line and not json.loads(line).get("done"))
                    assert "eval_count" not in json.loads(line) or json.loads(line)["done"]  # not shown mid-stream
                elif line.startswith(":"):
                    raise AssertionError(f"the backend's token count reached the client: {line}")
                elif line.startswith("data: {") and path in ("/v1/messages", "/v1/responses"):
                    event = json.loads(line[6:])  # named events: text deltas
                    got += event["type"] in ("content_block_delta", "response.output_text.delta")
                elif line.startswith("data: {"):
                    event = json.loads(line[6:])
                    assert "usage" not in event  # the client did not ask for it
                    got += bool(event["choices"] and event["choices"][0]["delta"].get("content"))
                if got >= n:
                    break
    assert got >= n, f"the answer ended after {got} tokens, before the client hung up"
    wait_for(lambda: len(ledger(db, "api_key = 'bob'")) > before, 60, "no ledger row for the hang-up")
    _, prompt, completion, status = ledger(db, "api_key = 'bob'")[-1]
    assert status == 499
    assert prompt > 0
    # what the router had passed on when the client left: at least what the client read, and
    # far from the 200 it asked for (the backend stopped)
    assert n <= completion < 100, completion
