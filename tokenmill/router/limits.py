"""Per-key rate limits over a sliding minute: requests and tokens.

Tokens are reserved when a request is admitted (an estimate: prompt characters / 4 plus its
token limit) and settled to the real count when it ends, so concurrent requests cannot all
slip under the limit before any of them has finished."""
from __future__ import annotations

import time
from collections import defaultdict, deque

class LimiterUnavailable(Exception):
    """The shared limiter could not be asked (Redis down or slow): the request gets a 503."""


DEFAULT_COMPLETION_ESTIMATE = 256  # tokens reserved for a request that names no limit


def estimate_tokens(body: dict) -> int:
    """Prompt characters / 4 (messages, prompt, inputs or input, and a system prompt or
    instructions), plus the request's token limit in whichever protocol it speaks."""
    chars = len(str(body.get("messages") or body.get("prompt") or body.get("inputs") or body.get("input") or ""))
    chars += len(str(body.get("system") or body.get("instructions") or ""))
    nested = [body.get("options"), body.get("parameters")]
    candidates = [body.get("max_completion_tokens"), body.get("max_tokens"), body.get("max_output_tokens")] + \
        [d.get(k) for d in nested if isinstance(d, dict) for k in ("num_predict", "max_new_tokens")]
    limit = next((c for c in candidates if isinstance(c, int) and c > 0), DEFAULT_COMPLETION_ESTIMATE)
    return chars // 4 + limit


class RateLimiter:
    def __init__(self, rpm: int | None, tpm: int | None):
        self.rpm, self.tpm = rpm, tpm
        self.requests: dict[str, deque] = defaultdict(deque)
        self.tokens: dict[str, deque] = defaultdict(deque)  # [time, tokens] entries

    @staticmethod
    def _trim(q: deque, now: float):
        while q and q[0][0] <= now - 60:
            q.popleft()

    def check(self, key: str, estimate: int = 0) -> tuple[str | None, list | None]:
        """(None, reservation) if the request may go, else (why not, None). Counts the request
        and reserves `estimate` tokens when it may; settle() the reservation at the end."""
        now = time.time()
        reqs, toks = self.requests[key], self.tokens[key]
        self._trim(reqs, now)
        self._trim(toks, now)
        if self.rpm is not None and len(reqs) >= self.rpm:
            return f"rate limit reached: {self.rpm} requests per minute", None
        if self.tpm is not None:
            used = sum(n for _, n in toks)
            if used >= self.tpm or (used and used + estimate > self.tpm):
                return f"rate limit reached: {self.tpm} tokens per minute", None
        reqs.append((now, 1))
        entry = None
        if self.tpm is not None:
            entry = [now, estimate]
            toks.append(entry)
        return None, entry

    def settle(self, reservation: list | None, n: int) -> None:
        """Replace a reservation's estimate by the tokens really used."""
        if reservation is not None:
            reservation[1] = n


# One atomic step on Redis: drop entries older than a minute, refuse (1: requests, 2: tokens)
# or record the request and its token reservation ("id:tokens" in a sorted set by time).
_CHECK = """
local now, rpm, tpm, est, id = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60)
if rpm >= 0 and redis.call('ZCARD', KEYS[1]) >= rpm then return 1 end
if tpm >= 0 then
  local used = 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do used = used + tonumber(string.match(m, ':(%d+)$')) end
  if used >= tpm or (used > 0 and used + est > tpm) then return 2 end
  redis.call('ZADD', KEYS[2], now, id .. ':' .. est)
end
redis.call('ZADD', KEYS[1], now, id)
redis.call('EXPIRE', KEYS[1], 120)
redis.call('EXPIRE', KEYS[2], 120)
return 0
"""
_SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[1], score, ARGV[2])
end
return 0
"""


class RedisRateLimiter:
    """The same sliding-minute limits, kept on Redis so that every router process (Ray Serve
    ingress replicas) counts against one budget per key. check() and settle() are async."""

    def __init__(self, url: str, rpm: int | None, tpm: int | None):
        import redis.asyncio as redis
        from .cache import REDIS_TIMEOUT_S
        self.client = redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        self.errors = (redis.RedisError, OSError)
        self.rpm, self.tpm = rpm, tpm
        self._check = self.client.register_script(_CHECK)
        self._settle = self.client.register_script(_SETTLE)

    async def check(self, key: str, estimate: int = 0) -> tuple[str | None, tuple | None]:
        if self.rpm is None and self.tpm is None:
            return None, None
        import uuid
        rid = uuid.uuid4().hex
        keys = [f"tokenmill:rl:{key}:requests", f"tokenmill:rl:{key}:tokens"]
        try:
            verdict = await self._check(keys=keys, args=[time.time(), -1 if self.rpm is None else self.rpm,
                                                         -1 if self.tpm is None else self.tpm, estimate, rid])
        except self.errors as e:  # fail closed: limits that cannot be checked are not skipped
            raise LimiterUnavailable(f"the rate limiter's Redis did not answer: {type(e).__name__}") from e
        if verdict == 1:
            return f"rate limit reached: {self.rpm} requests per minute", None
        if verdict == 2:
            return f"rate limit reached: {self.tpm} tokens per minute", None
        return None, (keys[1], f"{rid}:{estimate}", rid) if self.tpm is not None else None

    async def settle(self, reservation: tuple | None, n: int) -> None:
        if reservation is not None:
            key, member, rid = reservation
            try:
                await self._settle(keys=[key], args=[member, f"{rid}:{max(0, int(n))}"])
            except self.errors:
                pass  # the reservation's estimate stands; it leaves the window within a minute


def make_limiter(rpm: int | None, tpm: int | None, url: str | None):
    """Redis-backed when the router shares state through Redis (cache_url), else in memory."""
    if url and (rpm is not None or tpm is not None):
        return RedisRateLimiter(url, rpm, tpm)
    return RateLimiter(rpm, tpm)
