"""Prometheus metrics: vLLM's metric set under a `tokenmill:` prefix.

Engine state (running / waiting / KV usage / prefix cache / preemptions / token counters) is
read from the engine's plain-dataclass stats at scrape time; request latencies are observed
when a request finishes; HTTP responses are counted by a middleware.
"""
from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..engine.outputs import RequestOutput

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0, 160.0)


class _EngineCollector:
    def __init__(self, state):
        self.state = state

    def collect(self):
        """One sample per loaded model, labelled with its name."""
        pool = self.state.pool
        slots = [s for s in list(pool.slots.values()) if s.engine is not None] if pool is not None else []
        families: dict[str, object] = {}

        def add(kind, metric, doc, name, value):
            if metric not in families:
                families[metric] = kind(metric, doc, labels=["model_name"])
            families[metric].add_metric([name], value)

        for slot in slots:
            for kind, metric, doc, value in _engine_samples(slot.engine.get_stats()):
                add(kind, metric, doc, slot.name, value)
        if pool is not None:
            for slot in slots:
                add(GaugeMetricFamily, "tokenmill:model_loaded_bytes", "Memory a loaded model holds "
                    "(weights and KV cache, measured at load).", slot.name, slot.size_bytes)
        yield from families.values()
        if pool is not None:
            yield CounterMetricFamily("tokenmill:model_loads", "Models loaded on demand.", value=pool.loads)
            yield CounterMetricFamily("tokenmill:model_unloads", "Models unloaded (idle, keep_alive or "
                                      "for room).", value=pool.unloads)



def _engine_samples(s) -> list:
    """(metric kind, name, doc, value) of one engine's stats."""
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    return [(gauge, *g) for g in (
        ("tokenmill:num_requests_running", "Requests in the running batch.", s.num_running),
        ("tokenmill:num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting),
        ("tokenmill:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1).", s.kv_cache_usage),
        ("tokenmill:num_kv_blocks", "KV cache blocks in all.", s.num_kv_blocks))] + [(counter, *c) for c in (
        ("tokenmill:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries),
        ("tokenmill:prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits),
        ("tokenmill:num_preemptions", "Requests preempted (freed and recomputed later).", s.num_preemptions),
        ("tokenmill:spec_decode_num_drafts", "Speculative decoding: drafts verified (one per request and step).",
         s.spec_num_drafts),
        ("tokenmill:spec_decode_num_draft_tokens", "Speculative decoding: draft tokens proposed.",
         s.spec_num_draft_tokens),
        ("tokenmill:spec_decode_num_accepted_tokens", "Speculative decoding: draft tokens accepted.",
         s.spec_num_accepted_tokens),
        ("tokenmill:prompt_tokens", "Prompt tokens computed.", s.num_prompt_tokens),
        ("tokenmill:generation_tokens", "Tokens generated.", s.num_generation_tokens))]


RECENT_MAX = 200_000


async def watch_loop_lag(metrics: "Metrics", tick_s: float = 0.01) -> None:
    """Observe, forever, how late the event loop wakes a coroutine that sleeps tick_s."""
    import asyncio
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + tick_s
        await asyncio.sleep(tick_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - due))


class Metrics:
    def __init__(self, state):
        self.state = state
        r = self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.request_success = Counter("tokenmill:request_success", "Finished requests by reason.",
                                       labels + ["finished_reason"], registry=r)
        self.ttft = Histogram("tokenmill:time_to_first_token_seconds", "Time to first token.",
                              labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("tokenmill:time_per_output_token_seconds", "Time per output token "
                              "after the first.", labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("tokenmill:e2e_request_latency_seconds", "Arrival to finish.",
                             labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("tokenmill:request_queue_time_seconds", "Arrival to first "
                                    "scheduled.", labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_len = Histogram("tokenmill:request_prompt_tokens", "Prompt length.", labels,
                                    buckets=(1, 8, 32, 128, 512, 2048, 8192, 32768), registry=r)
        self.gen_len = Histogram("tokenmill:request_generation_tokens", "Generated tokens.", labels,
                                 buckets=(1, 8, 32, 128, 512, 2048, 8192, 32768), registry=r)
        self.http = Counter("tokenmill:http_responses", "HTTP responses by status code.",
                            ["status"], registry=r)
        r.register(_EngineCollector(state))
        self.cost = Counter("tokenmill:cost_dollars", "Cost of finished requests at --price.", labels,
                            registry=r)
        self.cost_total = 0.0
        self.loop_lag = Histogram("tokenmill:event_loop_lag_seconds", "How late a 10 ms timer on the "
                                  "server's event loop fires (nothing slow should run on the loop).",
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
                                  registry=r)
        # finished requests of the last hour, raw, for the dashboard's sliding-window
        # percentiles; bounded in count as well (at most this many, newest kept)
        self._recent: deque = deque(maxlen=RECENT_MAX)

    def recent(self, window_s: float) -> list[dict]:
        now = time.time()
        while self._recent and now - self._recent[0]["t"] > 3600:
            self._recent.popleft()
        return [r for r in self._recent if now - r["t"] <= window_s]

    def observe_finished(self, out: RequestOutput, name: str) -> None:
        m = out.metrics
        for c in out.outputs:
            self.request_success.labels(name, c.finish_reason or "abort").inc()
            self.gen_len.labels(name).observe(len(c.token_ids))
        self.prompt_len.labels(name).observe(len(out.prompt_token_ids))
        settings = self.state.settings
        generated = sum(len(c.token_ids) for c in out.outputs)
        cost = (len(out.prompt_token_ids) * settings.price_in + generated * settings.price_out) / 1e6
        self.cost.labels(name).inc(cost)
        self.cost_total += cost
        seen = {"t": time.time(), "ttft": None, "tpot": None, "e2e": None, "cost": cost}
        self._recent.append(seen)
        if m is None or m.finish_time is None:
            return
        seen["e2e"] = m.finish_time - m.arrival_time
        self.e2e.labels(name).observe(seen["e2e"])
        if m.first_scheduled_time is not None:
            self.queue_time.labels(name).observe(m.first_scheduled_time - m.arrival_time)
        if m.first_token_time is not None:
            seen["ttft"] = m.first_token_time - m.arrival_time
            self.ttft.labels(name).observe(seen["ttft"])
            n = len(out.outputs[0].token_ids)
            if n > 1:
                seen["tpot"] = (m.finish_time - m.first_token_time) / (n - 1)
                self.tpot.labels(name).observe(seen["tpot"])

    def observe_aborted(self, num_outputs: int, name: str) -> None:
        self.request_success.labels(name, "abort").inc(num_outputs)

    def render(self) -> bytes:
        return generate_latest(self.registry)
