"""The router's live dashboard feed: backends (health, outstanding, latency), the response
cache, the routing split, and cost by route and by API key from the ledger. Per-key figures
expose other tenants, so they go only to an admin key (or to everyone on an open router).
"""
from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..web.live import LiveFeed, quantile, registry_totals

router = APIRouter()

_LEDGER_EVERY_S = 5.0  # the ledger is read (a GROUP BY over SQLite) at most this often
WINDOW_S = 60.0


def _report(ledger, by: str) -> list[dict]:
    keys = ("group", "requests", "cache_hits", "prompt_tokens", "completion_tokens", "cost")
    return [dict(zip(keys, row)) for row in ledger.report(by)]


class RouterFeed:
    def __init__(self, r):
        self.r = r
        self.feed = LiveFeed(self.take)
        self._ledger: dict = {"at": 0.0, "route": [], "key": []}

    def _ledger_reports(self) -> dict:
        if time.time() - self._ledger["at"] >= _LEDGER_EVERY_S:
            self._ledger = {"at": time.time(), "route": _report(self.r.ledger, "route"),
                            "key": _report(self.r.ledger, "key")}
        return self._ledger

    def take(self) -> dict:
        r, m = self.r, self.r.metrics
        totals = registry_totals(m.registry)
        by_class: dict[str, float] = {}
        by_backend: dict[str, float] = {}
        for s in m.requests.collect()[0].samples:
            if s.name.endswith("_total"):
                cls = s.labels["status"][0] + "xx"
                by_class[cls] = by_class.get(cls, 0.0) + s.value
                by_backend[s.labels["backend"]] = by_backend.get(s.labels["backend"], 0.0) + s.value
        decisions: dict[str, dict[str, float]] = {}
        for s in m.decisions.collect()[0].samples:
            if s.name.endswith("_total"):
                decisions.setdefault(s.labels["route"], {})[s.labels["reason"]] = s.value
        hits, misses = 0.0, 0.0
        for s in m.cache.collect()[0].samples:
            if s.name.endswith("_total"):
                hits += s.value if s.labels["result"] == "hit" else 0.0
                misses += s.value if s.labels["result"] == "miss" else 0.0
        window = [w for w in r.recent if time.time() - w["t"] <= WINDOW_S]
        total = sum(by_class.values())
        decided = sum(sum(d.values()) for d in decisions.values())
        series = {
            "requests_total": total, **{f"responses_{c}": by_class.get(c, 0.0) for c in ("2xx", "4xx", "5xx")},
            "cost_total": totals.get("tokenmill_router:cost_dollars_total", 0.0),
            "outstanding": sum(b.outstanding for p in r.pools.values() for b in p.backends),
            "queue": r.waiting,
            "cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "large_share": (sum(decisions.get("large", {}).values()) / decided) if decided and "large" in r.pools else None,
        }
        for name in ("requests_total", "responses_4xx", "responses_5xx", "cost_total"):
            series[name.replace("_total", "") + "_per_s"] = self.feed.rate(name, series[name])
        rps = series["requests_per_s"]
        series["error_rate_4xx"] = series["responses_4xx_per_s"] / rps if rps else 0.0
        series["error_rate_5xx"] = series["responses_5xx_per_s"] / rps if rps else 0.0
        series["cost_per_hour"] = series.pop("cost_per_s") * 3600
        series["cost_per_request"] = (sum(w["cost"] for w in window) / len(window)) if window else 0.0
        latencies = [w["latency"] for w in window]
        series["latency_p50"], series["latency_p95"] = quantile(latencies, 0.5), quantile(latencies, 0.95)
        backends = []
        for pool in r.pools.values():
            for b in pool.backends:
                mine = [w["latency"] for w in window if w["backend"] == b.url]
                backends.append({"route": pool.route.name, "url": b.url, "healthy": b.healthy, "error": b.last_error,
                                 "outstanding": b.outstanding, "model": b.model, "requests": by_backend.get(b.url, 0.0),
                                 "latency_p50": quantile(mine, 0.5), "latency_p95": quantile(mine, 0.95)})
        routes = [{"route": name, "forced": d.get("forced", 0.0), "classifier": d.get("classifier", 0.0),
                   "single": d.get("single", 0.0), "share": sum(d.values()) / decided if decided else 0.0}
                  for name, d in ((n, decisions.get(n, {})) for n in r.pools)]
        ledger = self._ledger_reports()
        return {"series": series, "detail": {"totals": totals, "backends": backends, "routes": routes,
                                             "cost_by_route": ledger["route"], "cost_by_key": ledger["key"],
                                             "cache": {"hits": hits, "misses": misses}}}

    def hello(self) -> dict:
        cfg = self.r.cfg
        return {"kind": "router", "window_s": WINDOW_S, "policy": cfg.policy,
                "routes": [{"name": p.route.name, "urls": p.route.urls, "price": {"in": p.route.price_in,
                                                                                  "out": p.route.price_out}}
                           for p in self.r.pools.values()]}


def _can_see_keys(r, request: Request) -> bool:
    from ..api.auth import given_api_key
    return r.keys.is_admin(given_api_key(request.headers))  # an open router has one tenant


def _redacted(snapshot: dict) -> dict:
    return dict(snapshot, detail=dict(snapshot["detail"], cost_by_key=None))


@router.get("/tokenmill/dashboard")
async def dashboard_now(request: Request):
    r = request.app.state.router
    feed: RouterFeed = request.app.state.feed
    latest = feed.feed.latest
    if latest is not None and not _can_see_keys(r, request):
        latest = _redacted(latest)
    return dict(feed.hello(), latest=latest, history=list(feed.feed.history))


@router.get("/tokenmill/dashboard/stream", include_in_schema=False)  # endless SSE: not for generated clients
async def dashboard_stream(request: Request):
    r = request.app.state.router
    feed: RouterFeed = request.app.state.feed
    redact = (lambda s: s) if _can_see_keys(r, request) else _redacted
    return StreamingResponse(feed.feed.events(feed.hello(), redact), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
