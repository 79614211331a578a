"""The server's live dashboard feed: what /metrics says, as numbers a page can draw, pushed
every second (web/live.py), plus the process (CPU, RSS, GPU) and cost.

Counters are read from the same Prometheus registry that /metrics renders, so the page and a
scrape agree exactly; latency percentiles come from the raw observations of the last
`dashboard_window_s` seconds (each lies inside the histogram bucket that holds it).
"""
from __future__ import annotations

import asyncio
import os
import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from .. import __version__
from ..web.live import LiveFeed, quantile, registry_totals
from .serving import ServerState

router = APIRouter()



def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _gpu() -> dict:
    try:
        import torch
        if not torch.cuda.is_available():
            return {}
        out = {"gpu_mem_mb": torch.cuda.memory_reserved() / 2**20}
        try:
            out["gpu_util"] = float(torch.cuda.utilization())
        except Exception:  # needs pynvml; memory alone is still worth showing
            pass
        return out
    except Exception:
        return {}


def _loaded_models(pool) -> list[dict]:
    """The loaded models: memory, requests, and seconds until keep_alive unloads them (None:
    kept until room is needed)."""
    out = []
    for slot in pool.loaded():
        s = slot.engine.get_stats()
        left = None if slot.expires_at is None else max(0.0, slot.expires_at - time.monotonic())
        out.append({"name": slot.name, "size_bytes": slot.size_bytes, "requests": slot.leases,
                    "running": s.num_running, "waiting": s.num_waiting, "kv_usage": s.kv_cache_usage,
                    "expires_in_s": left, "busy": slot.leases > 0, "stats": s})
    return out


class ServerFeed:
    def __init__(self, state: ServerState):
        self.state = state
        self.feed = LiveFeed(self.take)
        self._cpu = (time.monotonic(), time.process_time())
        self._estimate: dict | None = None

    def take(self) -> dict:
        st, m = self.state, self.state.metrics
        totals = registry_totals(m.registry)
        http = {}
        for s in m.http.collect()[0].samples:
            if s.name.endswith("_total"):
                cls = s.labels["status"][0] + "xx"
                http[cls] = http.get(cls, 0.0) + s.value
        window = m.recent(st.settings.dashboard_window_s)
        series = {
            "requests_total": totals.get("tokenmill:request_success_total", 0.0),
            "responses_total": sum(http.values()),
            **{f"responses_{c}": http.get(c, 0.0) for c in ("2xx", "4xx", "5xx")},
            "prompt_tokens_total": totals.get("tokenmill:prompt_tokens_total", 0.0),
            "generation_tokens_total": totals.get("tokenmill:generation_tokens_total", 0.0),
            "cost_total": m.cost_total,
            "window_requests": len(window),
        }
        for name in ("requests_total", "prompt_tokens_total", "generation_tokens_total", "responses_total",
                     "responses_4xx", "responses_5xx", "cost_total"):
            series[name.replace("_total", "") + "_per_s"] = self.feed.rate(name, series[name])
        answered = series["responses_per_s"]
        series["error_rate_4xx"] = series["responses_4xx_per_s"] / answered if answered else 0.0
        series["error_rate_5xx"] = series["responses_5xx_per_s"] / answered if answered else 0.0
        for key in ("ttft", "tpot", "e2e"):
            values = [w[key] for w in window if w[key] is not None]
            series[f"{key}_p50"] = quantile(values, 0.5)
            series[f"{key}_p95"] = quantile(values, 0.95)
        series["cost_per_hour"] = series.pop("cost_per_s") * 3600
        series["cost_per_request"] = (sum(w["cost"] for w in window) / len(window)) if window else 0.0
        models = _loaded_models(st.pool)
        if models:  # every loaded model's engine, summed (the busiest KV cache)
            stats = [m.pop("stats") for m in models]
            queries = sum(s.prefix_cache_queries for s in stats)
            series.update(running=sum(s.num_running for s in stats), waiting=sum(s.num_waiting for s in stats),
                          kv_usage=max(s.kv_cache_usage for s in stats), loaded_models=len(models),
                          loaded_mb=sum(m["size_bytes"] for m in models) / 2**20,
                          prefix_hit_rate=sum(s.prefix_cache_hits for s in stats) / queries if queries else 0.0)
        wall, cpu = time.monotonic(), time.process_time()
        series["cpu_percent"] = 100.0 * (cpu - self._cpu[1]) / max(1e-6, wall - self._cpu[0])
        self._cpu = (wall, cpu)
        rss = _rss_bytes()
        series["rss_mb"] = rss / 2**20 if rss else None
        series.update(_gpu())
        return {"series": series, "detail": {"totals": totals, "http": http, "models": models}}

    async def hello(self) -> dict:
        st = self.state
        engine = st.engine
        if self._estimate is None and engine is not None:
            self._estimate = await asyncio.to_thread(_estimate_for, engine.model_path, engine.max_model_len)
        return {"kind": "server", "model": st.model_name, "version": __version__,
                "max_model_len": getattr(engine, "max_model_len", None),
                "device": getattr(engine, "device_type", None), "window_s": st.settings.dashboard_window_s,
                "price": {"in": st.settings.price_in, "out": st.settings.price_out},
                "estimate": self._estimate, "kernels": kernel_status()}


def kernel_status() -> dict:
    """Whether our C++ kernels loaded; when they did not, everything runs on slower PyTorch paths."""
    from ..model.layers import native
    return {"loaded": native._module is not None, "error": native._failed}


def _estimate_for(model_path: str, context: int) -> dict | None:
    from ..estimate import estimate, load_shape, measure_bandwidth
    try:
        return estimate(load_shape(model_path, None), context, 1, measure_bandwidth(mib=128, repeats=3))
    except Exception as e:  # an estimate is a nicety; a model we cannot read the shape of has none
        return {"error": f"{type(e).__name__}: {e}"}


@router.get("/tokenmill/dashboard")
async def dashboard_now(request: Request):
    """The dashboard's facts and the latest snapshot, as JSON."""
    feed: ServerFeed = request.app.state.feed
    return dict(await feed.hello(), latest=feed.feed.latest, history=list(feed.feed.history))


@router.get("/tokenmill/dashboard/stream", include_in_schema=False)  # endless SSE: not for generated clients
async def dashboard_stream(request: Request):
    """SSE: `hello` (facts and the last hour), then a `snapshot` every second."""
    feed: ServerFeed = request.app.state.feed
    hello = await feed.hello()
    return StreamingResponse(feed.feed.events(hello), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
