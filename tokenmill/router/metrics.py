"""Router metrics in Prometheus format (`tokenmill_router:` prefix)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily


class _PoolCollector:
    def __init__(self, router):
        self.router = router

    def collect(self):
        g = GaugeMetricFamily("tokenmill_router:backend_healthy", "1 if the backend passes its health "
                              "check.", labels=["route", "backend"])
        o = GaugeMetricFamily("tokenmill_router:backend_outstanding", "Requests in flight to the "
                              "backend.", labels=["route", "backend"])
        for pool in self.router.pools.values():
            for b in pool.backends:
                g.add_metric([pool.route.name, b.url], 1.0 if b.healthy else 0.0)
                o.add_metric([pool.route.name, b.url], b.outstanding)
        yield g
        yield o
        q = GaugeMetricFamily("tokenmill_router:queue_length", "Requests waiting for a slot.")
        q.add_metric([], self.router.waiting)
        yield q


class RouterMetrics:
    def __init__(self, router):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tokenmill_router:requests", "Requests by route, backend and status.",
                                ["route", "backend", "status"], registry=r)
        self.model_requests = Counter("tokenmill_router:model_requests", "Requests by backend and the "
                                      "model sent upstream.", ["backend", "model"], registry=r)
        self.cache = Counter("tokenmill_router:cache_lookups", "Cache lookups by result.",
                             ["result"], registry=r)
        self.retries = Counter("tokenmill_router:retries", "Requests retried on another backend.",
                               ["route"], registry=r)
        self.decisions = Counter("tokenmill_router:route_decisions", "Route decisions.",
                                 ["route", "reason"], registry=r)
        self.cost = Counter("tokenmill_router:cost_dollars", "Cost in dollars.", ["route"], registry=r)
        self.tokens = Counter("tokenmill_router:tokens", "Tokens by route and kind.", ["route", "kind"],
                              registry=r)
        self.latency = Histogram("tokenmill_router:request_latency_seconds", "End-to-end latency at "
                                 "the router.", ["route"], registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.rejected = Counter("tokenmill_router:rejected", "Requests refused at the router.",
                                ["reason"], registry=r)
        r.register(_PoolCollector(router))

    def render(self) -> bytes:
        return generate_latest(self.registry)
