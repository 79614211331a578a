"""Per-key rate limits over a sliding minute: requests and tokens.

Tokens are reserved when a request is admitted (an estimate: prompt characters / 4 plus its
token limit) and settled to the real count when it ends, so concurrent requests cannot all
slip under the limit before any of them has finished."""
from __future__ import annotations

import time
from collections import defaultdict, deque

DEFAULT_COMPLETION_ESTIMATE = 256  # tokens reserved for a request that names no limit


def estimate_tokens(body: dict) -> int:
    """Prompt characters / 4, plus the request's token limit in whichever protocol it speaks."""
    chars = len(str(body.get("messages") or body.get("prompt") or body.get("inputs") or ""))
    nested = [body.get("options"), body.get("parameters")]
    candidates = [body.get("max_completion_tokens"), body.get("max_tokens")] + \
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
