"""Response cache for deterministic requests (temperature 0, or a seed).

The key is a hash of the tenant, the route, the upstream model, the endpoint and the whole
body as sent (messages and prompt exactly, every sampling parameter, `user`), so two requests
share an entry only if they come from the same tenant and a backend would compute the same
answer for both: a space more is another prompt. A tenant never sees another's answer, nor
learns from a hit what another asked. In-memory LRU bounded in entries and bytes by default;
Redis shares it between routers (bounded by its maxmemory).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict

log = logging.getLogger("tokenmill.router")
REDIS_TIMEOUT_S = 2.0  # every Redis call: a router never hangs on a slow or lost Redis

# fields that change how the answer is delivered or billed, not what it is
_DELIVERY_FIELDS = {"stream", "stream_options", "model"}


def is_deterministic(body: dict, path: str = "/v1/chat/completions") -> bool:
    """Embeddings always are; a Response is not cached at all (each one is stored under its own
    id, which a cached copy would share)."""
    if path == "/v1/embeddings":
        return True
    if path.startswith("/v1/responses"):
        return False
    return body.get("temperature") == 0 or body.get("seed") is not None


def cache_key(tenant: str, path: str, route: str, upstream_model: str | None, body: dict) -> str | None:
    if not is_deterministic(body, path):
        return None
    canon = {k: v for k, v in body.items() if k not in _DELIVERY_FIELDS}
    blob = json.dumps({"tenant": tenant, "path": path, "route": route, "model": upstream_model, "body": canon},
                      sort_keys=True, ensure_ascii=False)
    return "tokenmill:cache:" + hashlib.sha256(blob.encode()).hexdigest()


class MemoryCache:
    def __init__(self, max_entries: int, ttl_s: float, max_bytes: int = 256 * 2**20):
        self.max_entries, self.ttl_s, self.max_bytes = max_entries, ttl_s, max_bytes
        self.items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    async def get(self, key: str) -> bytes | None:
        item = self.items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires < time.time():
            self._drop(key)
            return None
        self.items.move_to_end(key)
        return value

    def _drop(self, key: str) -> None:
        self.bytes -= len(self.items.pop(key)[1])

    async def set(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes // 8:  # one answer may not push out most of the cache
            return
        if key in self.items:
            self._drop(key)
        self.items[key] = (time.time() + self.ttl_s, value)
        self.bytes += len(value)
        while len(self.items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self.items)))

    async def close(self):
        pass


class RedisCache:
    """Shared between routers. Redis evicts by TTL here; size is bounded by Redis' maxmemory
    policy (set it to allkeys-lru for a pure cache)."""

    def __init__(self, url: str, ttl_s: float):
        import redis.asyncio as redis
        self.client = redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        self.errors = (redis.RedisError, OSError)
        self.ttl_s = ttl_s

    async def get(self, key: str) -> bytes | None:
        """A miss when Redis does not answer in time: the request goes to a backend."""
        try:
            return await self.client.get(key)
        except self.errors as e:
            log.warning("response cache: Redis get failed (%s); treated as a miss", e)
            return None

    async def set(self, key: str, value: bytes) -> None:
        try:
            await self.client.set(key, value, ex=max(1, int(self.ttl_s)))
        except self.errors as e:
            log.warning("response cache: Redis set failed (%s); answer not cached", e)

    async def close(self):
        await self.client.aclose()


def make_cache(url: str | None, max_entries: int, ttl_s: float, max_bytes: int = 256 * 2**20):
    if url:
        return RedisCache(url, ttl_s)
    return MemoryCache(max_entries, ttl_s, max_bytes)
