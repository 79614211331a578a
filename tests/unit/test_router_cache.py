"""The router's in-memory response cache is bounded in bytes as well as entries, and its keys
keep tenants (and users) apart."""
import asyncio

from tokenmill.router.cache import MemoryCache, cache_key


def test_bounded_in_bytes_oldest_out_first():
    async def run():
        c = MemoryCache(max_entries=100, ttl_s=60, max_bytes=1000)
        for i in range(10):
            await c.set(f"k{i}", b"x" * 100)
        await c.set("k10", b"y" * 100)  # over 1000 bytes: the oldest goes
        await c.set("huge", b"z" * 200)  # more than an eighth of the cache: never kept
        return c, [await c.get(f"k{i}") is not None for i in range(11)], await c.get("huge")
    c, present, huge = asyncio.run(run())
    assert present == [False] + [True] * 10 and huge is None and c.bytes == 1000


def test_keys_hold_the_tenant_and_the_user():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    a = cache_key("alice", "/v1/chat/completions", "default", "m", body)
    assert a != cache_key("bob", "/v1/chat/completions", "default", "m", body)
    assert a != cache_key("alice", "/v1/chat/completions", "default", "m", dict(body, user="u2"))
    assert a == cache_key("alice", "/v1/chat/completions", "default", "m", dict(body, stream=True))
