"""Hybrid routing (small / large), the cost ledger, API keys and rate limits."""
import sqlite3
import subprocess

import httpx
import openai
import pytest

from router_helpers import router


@pytest.fixture(scope="module")
def hybrid(replicas, logs):
    db = str(logs / "hybrid.db")
    r = router(["--route", f"small={replicas[0].url}", "--route", f"large={replicas[1].url}",
                "--route-model", "large=tiny", "--price", "small=0,0", "--price", "large=2.5,10",
                "--api-key", "alice=key-a", "--api-key", "bob=key-b", "--rate-limit-rpm", "1000",
                "--ledger", db, "--no-cache"], logs, "hybrid")
    yield r, db
    r.stop()


def client(r, key="key-a"):
    return openai.OpenAI(base_url=r.url + "/v1", api_key=key, max_retries=0)


ANALYSIS = ("Analyze the trade-offs between three database designs for an analytics system, step by step. "
            "1. Compare row stores and column stores for scans. 2. Evaluate the implications of "
            "denormalisation. 3. Assess the pros and cons of partitioning by day. Which would you choose, "
            "and why? Justify the reasoning with the costs involved. " * 2)


def routed(r, content, model="auto", key="key-a"):
    raw = client(r, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=4, temperature=0)
    return raw.headers["x-tokenmill-route"], raw.parse()


def test_greeting_small_analysis_large_forced_by_name(hybrid):
    r, _ = hybrid
    assert routed(r, "Hi there!")[0] == "small"
    assert routed(r, ANALYSIS)[0] == "large"
    assert routed(r, "Hi there!", model="large")[0] == "large"
    assert routed(r, ANALYSIS, model="small")[0] == "small"
    with pytest.raises(openai.NotFoundError):
        routed(r, "Hi", model="no-such-model")
    assert r.metric("tokenmill_router:route_decisions_total", label='reason="classifier"') >= 2


def ledger_count(db) -> int:
    return sqlite3.connect(db).execute("SELECT COUNT(*) FROM requests").fetchone()[0]


def ledger_rows(db, n, before, expect=None):
    """The last n ledger rows, once the router's writer thread has written them (rows of an
    earlier test may still be on their way: wait for the expected ones, with a deadline)."""
    import time
    deadline = time.time() + 60
    while True:
        rows = sqlite3.connect(db).execute(
            "SELECT api_key, route, prompt_tokens, completion_tokens, cost FROM requests ORDER BY ts DESC LIMIT ?",
            (n,)).fetchall()[::-1]
        done = ledger_count(db) >= before + n and (expect is None or [(p, c) for _, _, p, c, _ in rows] == expect)
        if done or time.time() > deadline:
            return rows
        time.sleep(0.05)


def test_ledger_matches_returned_usage(hybrid):
    r, db = hybrid
    before = ledger_count(db)
    usages = []
    for content, key in (("Hello!", "key-a"), (ANALYSIS, "key-b")):
        _, resp = routed(r, content, key=key)
        usages.append((resp.usage.prompt_tokens, resp.usage.completion_tokens))
    rows = ledger_rows(db, 2, before, usages)
    assert [(p, c) for _, _, p, c, _ in rows] == usages
    assert [(k, rt) for k, rt, *_ in rows] == [("alice", "small"), ("bob", "large")]
    p, c = usages[1]
    assert rows[1][4] == pytest.approx((p * 2.5 + c * 10) / 1e6)
    assert rows[0][4] == 0
    out = subprocess.run(["tokenmill", "usage", "--ledger", db, "--by", "route"], capture_output=True,
                         text=True, check=True).stdout
    assert "large" in out and "small" in out
    assert r.metric("tokenmill_router:cost_dollars_total") > 0


def test_bad_key_is_401_in_openai_shape(hybrid):
    r, _ = hybrid
    for headers in ({}, {"Authorization": "Bearer nope"}):
        resp = httpx.post(r.url + "/v1/chat/completions", headers=headers,
                          json={"model": "auto", "messages": [{"role": "user", "content": "x"}]})
        assert resp.status_code == 401
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        routed(r, "hi", key="wrong")


def test_rate_limit_is_429(replicas, logs):
    r = router(["--backend", replicas[2].url, "--api-key", "carol=key-c", "--rate-limit-rpm", "3",
                "--ledger", str(logs / "rl.db")], logs, "ratelimit")
    try:
        h = {"Authorization": "Bearer key-c"}
        body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        codes = [httpx.post(r.url + "/v1/chat/completions", json=body, headers=h, timeout=30).status_code
                 for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        last = httpx.post(r.url + "/v1/chat/completions", json=body, headers=h, timeout=30)
        assert last.status_code == 429 and last.headers["retry-after"]
        assert "rate limit" in last.json()["error"]["message"]
        assert last.json()["error"]["type"] == "rate_limit_error"
    finally:
        r.stop()


def test_bad_json_is_400(hybrid):
    r, _ = hybrid
    resp = httpx.post(r.url + "/v1/chat/completions", content=b"{bad", headers={"Authorization": "Bearer key-a"})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"
