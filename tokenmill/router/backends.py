"""Backends and their pools: health checks, in-flight counts, and the balancing policies."""
from __future__ import annotations

import asyncio
import itertools
import time

import httpx

from ..api.affinity import affine_choice
from .config import RouteConfig


class Backend:
    def __init__(self, url: str, api_key: str | None = None):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.healthy = False
        self.outstanding = 0
        self.model: str | None = None  # what /v1/models says it serves first (its default model)
        self.models: set[str] = set()  # every model it can serve (a tokenmill server: its store)
        self.last_error: str | None = None
        self.last_check = 0.0
        self.health_path = "/health"  # becomes /v1/models for upstreams without one

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def check(self, client: httpx.AsyncClient, timeout: float = 2.0) -> None:
        """tokenmill servers answer /health (503 while loading, draining or after an engine
        failure); other OpenAI-compatible upstreams are checked through /v1/models."""
        try:
            if self.health_path == "/health":
                r = await client.get(self.url + "/health", headers=self.headers(), timeout=timeout)
                if r.status_code == 404:
                    self.health_path = "/v1/models"
            if self.health_path == "/v1/models" or r.status_code == 200:
                # every check: a store's models come and go (pulls, deletes)
                models = await client.get(self.url + "/v1/models", headers=self.headers(), timeout=timeout)
                if models.status_code == 200:
                    data = models.json().get("data") or []
                    self.model = data[0]["id"] if data else self.model
                    self.models = {m["id"] for m in data if isinstance(m, dict) and "id" in m}
                if self.health_path == "/v1/models":
                    r = models
            ok = r.status_code == 200
            self.last_error = None if ok else f"HTTP {r.status_code} from {self.health_path}"
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            ok = False
            self.last_error = f"{type(e).__name__}: {e}"
        self.healthy = ok
        self.last_check = time.time()

    def mark_failed(self, why: str) -> None:
        self.healthy = False
        self.last_error = why


class Pool:
    """The backends of one route."""

    def __init__(self, route: RouteConfig):
        self.route = route
        self.backends = [Backend(u, route.api_key) for u in route.urls]
        self._rr = itertools.count()

    def healthy(self, model: str | None = None) -> list[Backend]:
        """Live backends; those that serve `model`, when one is named and any of them has it."""
        live = [b for b in self.backends if b.healthy]
        having = [b for b in live if model and model in b.models]
        return having or live

    def serves(self, model: str | None) -> bool:
        return bool(model) and any(model in b.models for b in self.backends if b.healthy)

    def knows_models(self) -> bool:
        """Every live backend said which models it has (so a name none has is unknown)."""
        live = self.healthy()
        return bool(live) and all(b.models for b in live)

    def order(self, policy: str, affinity_key: str | None, max_imbalance: int,
              model: str | None = None) -> list[Backend]:
        """Healthy backends (those that have the model), best first, for this request."""
        live = self.healthy(model)
        if not live:
            return []
        start = next(self._rr) % len(live)
        rotated = live[start:] + live[:start]  # round-robin tie-breaking
        if policy == "round_robin":
            return rotated
        by_load = sorted(rotated, key=lambda b: b.outstanding)  # stable: keeps rotation on ties
        if policy == "prefix_affinity":
            affine = affine_choice(live, affinity_key, lambda b: b.url, lambda b: b.outstanding, max_imbalance)
            if affine is not None:
                return [affine] + [b for b in by_load if b is not affine]
        return by_load


async def health_loop(pools: list[Pool], interval: float, client: httpx.AsyncClient, timeout: float = 2.0) -> None:
    while True:
        await asyncio.gather(*(b.check(client, timeout) for p in pools for b in p.backends))
        await asyncio.sleep(interval)
