"""`tokenmill router`: an OpenAI-compatible gateway in front of model servers.

request -> API key, rate limit -> route (forced by model name, or the complexity classifier)
        -> response cache (deterministic requests) -> bounded queue -> backend (balancing
        policy; retried on another backend if it fails before the first byte) -> client,
        streamed through token by token -> ledger, metrics, cache.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..server.errors import APIError, error_response
from .backends import Pool, health_loop
from .cache import cache_key, make_cache
from .classifier import classify
from .config import RouterConfig
from .ledger import Ledger
from .limits import RateLimiter
from .metrics import RouterMetrics

_RETRYABLE = {502, 503, 504}


class Router:
    def __init__(self, cfg: RouterConfig):
        self.cfg = cfg
        self.pools = {r.name: Pool(r) for r in cfg.routes}
        self.hybrid = len(self.pools) > 1
        self.cache = make_cache(cfg.cache_url, cfg.cache_max_entries, cfg.cache_ttl_s) \
            if cfg.cache_enabled else None
        self.ledger = Ledger(cfg.ledger_path)
        self.limiter = RateLimiter(cfg.rate_limit_rpm, cfg.rate_limit_tpm)
        self.metrics = RouterMetrics(self)
        self.waiting = 0
        self.slots: asyncio.Semaphore | None = None
        self.client: httpx.AsyncClient | None = None

    # ---- admission ---------------------------------------------------------------------
    def authenticate(self, request: Request) -> str:
        if not self.cfg.api_keys:
            return "anonymous"
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        name = self.cfg.api_keys.get(key)
        if name is None:
            self.metrics.rejected.labels("auth").inc()
            raise APIError(401, "invalid or missing API key")
        return name

    def choose_route(self, body: dict) -> tuple[str, str]:
        model = body.get("model")
        if not self.hybrid:
            return next(iter(self.pools)), "single"
        if model in self.pools:
            return model, "forced"
        for name, pool in self.pools.items():
            if model and (model == pool.route.model or any(model == b.model for b in pool.backends)):
                return name, "forced"
        if model in (None, "", "auto"):
            decision = classify(body, self.cfg.classifier)
            route = decision.route if decision.route in self.pools else next(iter(self.pools))
            return route, "classifier"
        raise APIError(404, f"The model `{model}` does not exist. Use `auto`, a route name "
                            f"({', '.join(self.pools)}) or a served model name.", param="model",
                       code="model_not_found")

    @contextlib.asynccontextmanager
    async def slot(self):
        if self.slots.locked() and self.waiting >= self.cfg.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise APIError(429, f"the router queue is full ({self.cfg.max_queue} waiting); retry later",
                           headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.slots.release()

    # ---- bookkeeping -------------------------------------------------------------------
    def record(self, *, key, route, backend, model, usage, started, cache_hit, status):
        usage = usage or {}
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        rc = self.pools[route].route
        cost = 0.0 if cache_hit else (p * rc.price_in + c * rc.price_out) / 1e6
        self.ledger.record(api_key=key, route=route, backend=backend, model=model, prompt_tokens=p,
                           completion_tokens=c, latency_s=time.time() - started, cache_hit=cache_hit,
                           status=status, cost=cost)
        self.limiter.add_tokens(key, p + c)
        self.metrics.requests.labels(route, backend or "cache", str(status)).inc()
        self.metrics.latency.labels(route).observe(time.time() - started)
        self.metrics.tokens.labels(route, "prompt").inc(p)
        self.metrics.tokens.labels(route, "completion").inc(c)
        self.metrics.cost.labels(route).inc(cost)

    # ---- proxying ----------------------------------------------------------------------
    async def handle(self, request: Request, path: str):
        started = time.time()
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        key = self.authenticate(request)
        why = self.limiter.check(key)
        if why:
            self.metrics.rejected.labels("rate_limit").inc()
            raise APIError(429, why, headers={"Retry-After": "60"})
        route, reason = self.choose_route(body)
        self.metrics.decisions.labels(route, reason).inc()
        pool = self.pools[route]
        live = pool.healthy()
        upstream_model = pool.route.model or (live[0].model if live else None) or body.get("model")
        stream = bool(body.get("stream"))
        headers = {"x-tokenmill-route": route}

        ckey = cache_key(path, route, upstream_model, body) if self.cache else None
        if ckey:
            cached = await self.cache.get(ckey)
            self.metrics.cache.labels("hit" if cached else "miss").inc()
            if cached:
                headers["x-tokenmill-cache"] = "hit"
                self.record(key=key, route=route, backend=None, model=upstream_model,
                            usage=json.loads(cached).get("usage"), started=started, cache_hit=True, status=200)
                if stream:
                    return StreamingResponse(_replay_sse(cached, path, body), media_type="text/event-stream",
                                             headers=headers)
                return Response(cached, media_type="application/json", headers=headers)
        headers["x-tokenmill-cache"] = "miss" if ckey else "skip"

        upstream = dict(body, model=upstream_model)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if stream:  # ask for usage so that the ledger can count; dropped again if not asked for
            upstream["stream_options"] = dict(body.get("stream_options") or {}, include_usage=True)
        affinity = _affinity_key(body, self.cfg.affinity_prefix_chars)
        candidates = pool.order(self.cfg.policy, affinity, self.cfg.affinity_max_imbalance)
        if not candidates:
            raise APIError(503, f"no healthy backend for route `{route}`", headers={"Retry-After": "1"})
        async with self.slot():
            attempts = candidates[:self.cfg.max_retries + 1]
            for i, backend in enumerate(attempts):
                if i:
                    self.metrics.retries.labels(route).inc()
                backend.outstanding += 1
                try:
                    req = self.client.build_request("POST", backend.url + path, json=upstream,
                                                    headers=backend.headers())
                    resp = await self.client.send(req, stream=True)
                    if resp.status_code in _RETRYABLE and i + 1 < len(attempts):
                        await resp.aclose()
                        backend.mark_failed(f"HTTP {resp.status_code}")
                        continue
                    if resp.status_code != 200 or not stream:
                        content = await resp.aread()
                        await resp.aclose()
                        usage = _usage_of(content) if resp.status_code == 200 else None
                        if ckey and resp.status_code == 200:
                            await self.cache.set(ckey, content)
                        self.record(key=key, route=route, backend=backend.url, model=upstream_model,
                                    usage=usage, started=started, cache_hit=False, status=resp.status_code)
                        headers["x-tokenmill-backend"] = backend.url
                        return Response(content, status_code=resp.status_code, headers=headers,
                                        media_type=resp.headers.get("content-type", "application/json"))
                    lines = resp.aiter_lines()
                    first = await anext(lines)  # the backend has really started answering
                except (httpx.HTTPError, StopAsyncIteration) as e:
                    backend.mark_failed(f"{type(e).__name__}: {e}")
                    continue
                finally:
                    backend.outstanding -= 1
                backend.outstanding += 1  # held again until the relay ends
                headers["x-tokenmill-backend"] = backend.url
                relay = self._relay(resp, first, lines, backend, route, key, upstream_model, started,
                                    ckey, path, wants_usage)
                return StreamingResponse(relay, media_type="text/event-stream", headers=headers)
        self.metrics.requests.labels(route, "none", "503").inc()
        raise APIError(503, f"every backend of route `{route}` failed; retry later",
                       headers={"Retry-After": "1"})

    async def _relay(self, resp, first, lines, backend, route, key, model, started, ckey, path, wants_usage):
        acc = _StreamAccumulator(path)
        ok = False
        try:
            line = first
            while True:
                keep = acc.feed(line)
                if keep or wants_usage:
                    yield line + "\n"
                try:
                    line = await anext(lines)
                except StopAsyncIteration:
                    break
            ok = acc.done
        except httpx.HTTPError as e:
            backend.mark_failed(f"{type(e).__name__}: {e}")
            yield "data: " + json.dumps({"error": {"message": "the backend failed mid-stream",
                                                   "type": "server_error", "param": None, "code": 502}}) + "\n\n"
        finally:
            backend.outstanding -= 1
            await resp.aclose()
            self.record(key=key, route=route, backend=backend.url, model=model, usage=acc.usage,
                        started=started, cache_hit=False, status=200 if ok else 502)
            if ok and ckey and acc.cacheable:
                await self.cache.set(ckey, acc.as_response(model))


def _affinity_key(body: dict, chars: int) -> str | None:
    if "messages" in body:
        text = "".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
    else:
        text = str(body.get("prompt", ""))
    return hashlib.blake2b(text[:chars].encode(), digest_size=8).hexdigest() if text else None


def _usage_of(content: bytes) -> dict | None:
    try:
        return json.loads(content).get("usage")
    except (ValueError, AttributeError):
        return None


class _StreamAccumulator:
    """Reads an OpenAI SSE stream as it passes: usage for the ledger, and the whole answer
    for the cache. feed() says whether a line goes on to a client that did not ask for usage."""

    def __init__(self, path: str):
        self.chat = path.endswith("chat/completions")
        self.texts: dict[int, str] = {}
        self.finish: dict[int, str] = {}
        self.usage = None
        self.done = False
        self.cacheable = True
        self.meta: dict = {}

    def feed(self, line: str) -> bool:
        if not line.startswith("data:"):
            return True
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return True
        try:
            event = json.loads(data)
        except ValueError:
            return True
        if "error" in event:
            self.cacheable = False
            return True
        self.meta = {k: event.get(k) for k in ("id", "created")}
        if event.get("usage"):
            self.usage = event["usage"]
        for ch in event.get("choices") or []:
            i = ch.get("index", 0)
            piece = (ch.get("delta") or {}).get("content") if self.chat else ch.get("text")
            self.texts[i] = self.texts.get(i, "") + (piece or "")
            if ch.get("finish_reason"):
                self.finish[i] = ch["finish_reason"]
            if ch.get("logprobs"):
                self.cacheable = False  # logprobs are not rebuilt from a stream
        return bool(event.get("choices"))  # a usage-only chunk goes only to those who asked

    def as_response(self, model: str) -> bytes:
        idx = sorted(self.texts)
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": self.texts[i]},
                        "logprobs": None, "finish_reason": self.finish.get(i)} for i in idx]
            obj = "chat.completion"
        else:
            choices = [{"index": i, "text": self.texts[i], "logprobs": None,
                        "finish_reason": self.finish.get(i)} for i in idx]
            obj = "text_completion"
        return json.dumps({"id": self.meta.get("id"), "object": obj, "created": self.meta.get("created"),
                           "model": model, "choices": choices, "usage": self.usage}).encode()


async def _replay_sse(cached: bytes, path: str, body: dict):
    """A cached answer, streamed as the backend would have: role, content, finish, usage."""
    resp = json.loads(cached)
    chat = path.endswith("chat/completions")
    base = {"id": resp.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": resp.get("created"), "model": resp.get("model")}
    for ch in resp.get("choices", []):
        i = ch["index"]
        if chat:
            for delta, finish in (({"role": "assistant", "content": ""}, None),
                                  ({"content": ch["message"]["content"]}, None), ({}, ch["finish_reason"])):
                yield "data: " + json.dumps({**base, "choices": [{"index": i, "delta": delta, "logprobs": None,
                                                                  "finish_reason": finish}]}) + "\n\n"
        else:
            yield "data: " + json.dumps({**base, "choices": [{"index": i, "text": ch["text"], "logprobs": None,
                                                              "finish_reason": ch["finish_reason"]}]}) + "\n\n"
    if (body.get("stream_options") or {}).get("include_usage"):
        yield "data: " + json.dumps({**base, "choices": [], "usage": resp.get("usage")}) + "\n\n"
    yield "data: [DONE]\n\n"


def create_router_app(cfg: RouterConfig) -> FastAPI:
    router = Router(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        router.slots = asyncio.Semaphore(cfg.max_outstanding)
        router.client = httpx.AsyncClient(timeout=httpx.Timeout(cfg.request_timeout_s, connect=2.0),
                                          limits=httpx.Limits(max_connections=cfg.max_outstanding + 16))
        await asyncio.gather(*(b.check(router.client) for p in router.pools.values() for b in p.backends))
        checker = asyncio.create_task(health_loop(list(router.pools.values()), cfg.health_interval_s,
                                                  router.client))
        yield
        checker.cancel()
        await router.client.aclose()
        if router.cache:
            await router.cache.close()
        router.ledger.close()

    app = FastAPI(title="tokenmill router", lifespan=lifespan)
    app.state.router = router

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response("/v1", e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = e.detail if e.status_code != 404 else f"no route {request.method} {request.url.path}"
        return error_response("/v1", e.status_code, str(message))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        return error_response("/v1", 500, f"internal error: {type(e).__name__}: {e}")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await router.handle(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await router.handle(request, "/v1/completions")

    @app.get("/v1/models")
    async def models(request: Request):
        router.authenticate(request)
        data = [{"id": name, "object": "model", "owned_by": "tokenmill-router"} for name in router.pools]
        if router.hybrid:
            data.insert(0, {"id": "auto", "object": "model", "owned_by": "tokenmill-router"})
        served = {b.model for p in router.pools.values() for b in p.backends if b.model}
        data += [{"id": m, "object": "model", "owned_by": "tokenmill-router"} for m in sorted(served)
                 if m not in router.pools]
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        live = {name: len(p.healthy()) for name, p in router.pools.items()}
        ok = all(live.values())
        return JSONResponse({"status": "ok" if ok else "degraded", "healthy_backends": live},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(router.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
