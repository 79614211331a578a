"""Per-key rate limits over a sliding minute: requests and tokens."""
from __future__ import annotations

import time
from collections import defaultdict, deque


class RateLimiter:
    def __init__(self, rpm: int | None, tpm: int | None):
        self.rpm, self.tpm = rpm, tpm
        self.requests: dict[str, deque] = defaultdict(deque)
        self.tokens: dict[str, deque] = defaultdict(deque)

    @staticmethod
    def _trim(q: deque, now: float):
        while q and q[0][0] <= now - 60:
            q.popleft()

    def check(self, key: str) -> str | None:
        """None if the request may go, else why not. Counts the request when it may."""
        now = time.time()
        reqs, toks = self.requests[key], self.tokens[key]
        self._trim(reqs, now)
        self._trim(toks, now)
        if self.rpm is not None and len(reqs) >= self.rpm:
            return f"rate limit reached: {self.rpm} requests per minute"
        if self.tpm is not None and sum(n for _, n in toks) >= self.tpm:
            return f"rate limit reached: {self.tpm} tokens per minute"
        reqs.append((now, 1))
        return None

    def add_tokens(self, key: str, n: int) -> None:
        if self.tpm is not None and n:
            self.tokens[key].append((time.time(), n))
