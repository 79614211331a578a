"""Response cache: deterministic requests are answered without the backend, streaming and
not; sampled requests without a seed never are; routers share hits through a real Redis."""
import httpx
import openai
import pytest

from router_helpers import backend_requests, router

MSGS = [{"role": "user", "content": "Tell me about   caching."}]


@pytest.fixture(scope="module")
def one_backend(replicas):
    return replicas[0]


@pytest.fixture(scope="module")
def cached_router(one_backend, logs):
    r = router(["--backend", one_backend.url, "--ledger", str(logs / "cache.db")], logs, "cache")
    yield r
    r.stop()


def post(r, body, **kw):
    return httpx.post(r.url + "/v1/chat/completions", json=body, timeout=60, **kw)


def test_repeat_is_served_from_cache(cached_router, one_backend):
    body = {"model": "tiny", "messages": MSGS, "temperature": 0, "max_tokens": 12}
    first = post(cached_router, body)
    assert first.headers["x-tokenmill-cache"] == "miss"
    n = backend_requests(one_backend)
    second = post(cached_router, body)
    assert second.headers["x-tokenmill-cache"] == "hit"
    assert second.content == first.content
    assert backend_requests(one_backend) == n  # the backend never saw it
    # other whitespace is another prompt (other tokens): never the cached answer
    spaced = post(cached_router, dict(body, messages=[{"role": "user", "content": "Tell me about caching."}]))
    assert spaced.headers["x-tokenmill-cache"] == "miss"
    assert cached_router.metric("tokenmill_router:cache_lookups_total", label='"hit"') >= 1


def test_stream_hit_replays_the_same_text(cached_router, one_backend):
    c = openai.OpenAI(base_url=cached_router.url + "/v1", api_key="x", max_retries=0)
    kw = dict(model="tiny", messages=[{"role": "user", "content": "stream me"}], temperature=0, max_tokens=10)
    whole = c.chat.completions.create(**kw)  # miss: fills the cache
    n = backend_requests(one_backend)
    raw = c.chat.completions.with_raw_response.create(stream=True, stream_options={"include_usage": True}, **kw)
    assert raw.headers["x-tokenmill-cache"] == "hit"
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert backend_requests(one_backend) == n
    # and a streamed miss fills the cache for a later non-streamed hit
    kw2 = dict(kw, messages=[{"role": "user", "content": "stream first"}])
    streamed = "".join(ch.choices[0].delta.content or "" for ch in
                       c.chat.completions.create(stream=True, **kw2) if ch.choices)
    n = backend_requests(one_backend)
    again = c.chat.completions.with_raw_response.create(**kw2)
    assert again.headers["x-tokenmill-cache"] == "hit"
    assert again.parse().choices[0].message.content == streamed
    assert backend_requests(one_backend) == n


def test_sampled_without_seed_is_never_cached(cached_router, one_backend):
    body = {"model": "tiny", "messages": MSGS, "temperature": 0.8, "max_tokens": 5}
    for _ in range(3):
        n = backend_requests(one_backend)
        r = post(cached_router, body)
        assert r.headers["x-tokenmill-cache"] == "skip"
        assert backend_requests(one_backend) == n + 1
    seeded = dict(body, seed=42)
    post(cached_router, seeded)
    assert post(cached_router, seeded).headers["x-tokenmill-cache"] == "hit"


def test_two_routers_share_hits_through_redis(one_backend, logs, redis_url):
    a = router(["--backend", one_backend.url, "--cache-url", redis_url, "--ledger", str(logs / "ra.db")], logs, "ra")
    b = router(["--backend", one_backend.url, "--cache-url", redis_url, "--ledger", str(logs / "rb.db")], logs, "rb")
    try:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "shared"}], "temperature": 0,
                "max_tokens": 9}
        first = post(a, body)
        assert first.headers["x-tokenmill-cache"] == "miss"
        n = backend_requests(one_backend)
        second = post(b, body)
        assert second.headers["x-tokenmill-cache"] == "hit"
        assert second.content == first.content
        assert backend_requests(one_backend) == n
    finally:
        a.stop()
        b.stop()
