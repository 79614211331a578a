"""Response cache for deterministic requests (temperature 0, or a seed).

The key is a hash of the route, the upstream model, the endpoint and the whole body as sent
(messages and prompt exactly, every sampling parameter), so two requests share an entry only
if a backend would compute the same answer for both: a space more is another prompt. In-memory LRU by default; Redis shares it between routers.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict

# fields that change how the answer is delivered or billed, not what it is
_DELIVERY_FIELDS = {"stream", "stream_options", "user", "model"}


def is_deterministic(body: dict) -> bool:
    return body.get("temperature") == 0 or body.get("seed") is not None


def cache_key(path: str, route: str, upstream_model: str | None, body: dict) -> str | None:
    if not is_deterministic(body):
        return None
    canon = {k: v for k, v in body.items() if k not in _DELIVERY_FIELDS}
    blob = json.dumps({"path": path, "route": route, "model": upstream_model, "body": canon},
                      sort_keys=True, ensure_ascii=False)
    return "tokenmill:cache:" + hashlib.sha256(blob.encode()).hexdigest()


class MemoryCache:
    def __init__(self, max_entries: int, ttl_s: float):
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self.items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        item = self.items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.time():
            del self.items[key]
            return None
        self.items.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes) -> None:
        self.items[key] = (time.time() + self.ttl_s, value)
        self.items.move_to_end(key)
        while len(self.items) > self.max_entries:
            self.items.popitem(last=False)

    async def close(self):
        pass


class RedisCache:
    """Shared between routers. Redis evicts by TTL here; size is bounded by Redis' maxmemory
    policy (set it to allkeys-lru for a pure cache)."""

    def __init__(self, url: str, ttl_s: float):
        import redis.asyncio as redis
        self.client = redis.from_url(url)
        self.ttl_s = ttl_s

    async def get(self, key: str) -> bytes | None:
        return await self.client.get(key)

    async def set(self, key: str, value: bytes) -> None:
        await self.client.set(key, value, ex=max(1, int(self.ttl_s)))

    async def close(self):
        await self.client.aclose()


def make_cache(url: str | None, max_entries: int, ttl_s: float):
    if url:
        return RedisCache(url, ttl_s)
    return MemoryCache(max_entries, ttl_s)
