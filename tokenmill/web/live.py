"""A live feed for a dashboard: a snapshot of the numbers taken every second, the last hour
kept in memory (so a page opened now shows history), pushed to each open page as SSE.

A snapshot is {"t": unix time, "series": {name: number}, "detail": {...}}. The history keeps
only (t, series): the tables in "detail" (backends, costs by key) matter only for now.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from collections import deque
from collections.abc import Callable


class LiveFeed:
    def __init__(self, take: Callable[[], dict], interval_s: float = 1.0, keep: int = 3600):
        self.take = take                 # () -> {"series": {...}, "detail": {...}}
        self.interval_s = interval_s
        self.history: deque = deque(maxlen=keep)
        self.latest: dict | None = None
        self._changed = asyncio.Event()

    def tick(self) -> dict:
        snap = self.take()
        snap["t"] = time.time()
        self.latest = snap
        self.history.append({"t": snap["t"], "series": snap["series"]})
        self._changed.set()
        self._changed = asyncio.Event()
        return snap

    def rate(self, name: str, value: float, span_s: float = 5.0) -> float:
        """Per-second rate of a cumulative series over the last span_s seconds of history."""
        now = time.time()
        then = next((h for h in self.history if now - h["t"] <= span_s), None)
        if then is None or name not in then["series"] or now - then["t"] < 0.5:
            return 0.0
        return max(0.0, value - then["series"][name]) / (now - then["t"])

    async def run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception as e:  # a dashboard must never take the server down
                print(f"tokenmill: dashboard snapshot failed: {type(e).__name__}: {e}", flush=True)
            await asyncio.sleep(self.interval_s)

    async def events(self, hello: dict, redact: Callable[[dict], dict] = lambda s: s):
        """SSE: one `hello` event (static facts and the history), then every new snapshot."""
        yield _event("hello", dict(hello, history=list(self.history), interval_s=self.interval_s))
        while True:
            changed = self._changed
            await changed.wait()
            if self.latest is not None:
                yield _event("snapshot", redact(self.latest))


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def registry_totals(registry) -> dict[str, float]:
    """Every counter and histogram count/sum, summed over labels: {sample name: value}."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name.endswith(("_total", "_count", "_sum")) and not s.name.endswith("_created"):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def quantile(values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
