"""`tokenmill router`: an OpenAI-compatible gateway in front of model servers.

request -> API key, rate limit -> route (forced by model name, or the complexity classifier)
        -> response cache (deterministic requests) -> bounded queue -> backend (balancing
        policy; retried on another backend if it fails before the first byte) -> client,
        streamed through token by token -> ledger, metrics, cache.

It proxies every protocol a tokenmill server speaks (OpenAI chat, completions, Responses and
embeddings, Anthropic Messages, Ollama, TGI), so that
`serve --replicas N` serves all of them. A request holds its concurrency slot until its
answer has ended (the whole stream); a non-streaming client that leaves cancels the upstream
request.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from starlette.background import BackgroundTask

from ..server.disconnect import until_disconnect
from ..api.affinity import affinity_key
from ..api.auth import KeyRing
from ..api.errors import APIError, install_error_handlers, is_streaming, protocol_of
from ..api.gate import Gate, GateRules
from ..api.sse import stream_error
from .backends import Pool, health_loop
from .cache import cache_key, make_cache
from .classifier import classify
from ..web import is_public, mount_pages
from .config import RouterConfig
from .dashboard import RouterFeed
from .dashboard import router as dashboard_routes
from .ledger import Ledger
from .limits import LimiterUnavailable, estimate_tokens, make_limiter
from .metrics import RouterMetrics
from .streams import StreamAccumulator, replay_sse, usage_of

_RETRYABLE = {502, 503, 504}


class Router:
    def __init__(self, cfg: RouterConfig, ledger=None):
        self.cfg = cfg
        self.pools = {r.name: Pool(r) for r in cfg.routes}
        self.hybrid = len(self.pools) > 1
        self.cache = make_cache(cfg.cache_url, cfg.cache_max_entries, cfg.cache_ttl_s, cfg.cache_max_bytes) \
            if cfg.cache_enabled else None
        self.ledger = ledger or Ledger(cfg.ledger_path)  # anything with record/report/flush/close
        self.limiter = make_limiter(cfg.rate_limit_rpm, cfg.rate_limit_tpm, cfg.cache_url)
        self.keys = KeyRing(cfg.api_keys, cfg.admin_keys)
        self.metrics = RouterMetrics(self)
        self.waiting = 0
        self.recent: collections.deque = collections.deque(maxlen=100_000)  # for the dashboard
        self.slots: asyncio.Semaphore | None = None
        self.client: httpx.AsyncClient | None = None

    # ---- admission ---------------------------------------------------------------------
    def tenant_of(self, given_key: str) -> str | None:
        """The gate's check (api/gate.py), before any body is read."""
        name = self.keys.tenant(given_key)
        if name is None:
            self.metrics.rejected.labels("auth").inc()
        return name

    def choose_route(self, body: dict) -> tuple[str, str]:
        model = body.get("model")
        if not isinstance(model, str):
            model = None
        if model in self.pools:
            return model, "forced"
        for name, pool in self.pools.items():  # a model one of its backends has (its store)
            if model and (model == pool.route.model or pool.serves(model)):
                return name, "forced" if self.hybrid else "model"
        if model not in (None, "", "auto") and all(p.knows_models() for p in self.pools.values()):
            names = sorted({m for p in self.pools.values() for b in p.healthy() for m in b.models})
            raise APIError(404, f"The model `{model}` does not exist. The backends serve: {', '.join(names)}"
                                + (f"; or use `auto` or a route name ({', '.join(self.pools)})" if self.hybrid else "")
                                + ".", param="model", code="model_not_found")
        if not self.hybrid:
            return next(iter(self.pools)), "single"
        if model in (None, "", "auto"):
            decision = classify(body, self.cfg.classifier)
            route = decision.route if decision.route in self.pools else next(iter(self.pools))
            return route, "classifier"
        raise APIError(404, f"The model `{model}` does not exist. Use `auto`, a route name "
                            f"({', '.join(self.pools)}) or a served model name.", param="model",
                       code="model_not_found")

    async def admit(self, tenant: str, estimate: int):
        """Count a request against its tenant's limits (429 over them); its token reservation."""
        try:
            why, reservation = await _maybe(self.limiter.check(tenant, estimate))
        except LimiterUnavailable as e:
            raise APIError(503, str(e), headers={"Retry-After": "1"}) from e
        if why:
            self.metrics.rejected.labels("rate_limit").inc()
            raise APIError(429, why, headers={"Retry-After": "60"})
        return reservation

    def upstream_headers(self, backend, tenant: str) -> dict:
        """To a backend: its key; the tenant's prefix-cache salt; and a request for token
        counts in every chunk, so that a client that hangs up is billed what it was sent."""
        headers = {**backend.headers(), "x-tokenmill-usage": "continuous"}
        salt = self.keys.salt(tenant) if self.cfg.tenant_cache_salt else None
        if salt:
            headers["x-tokenmill-cache-salt"] = salt
        return headers

    async def acquire_slot(self) -> None:
        """Wait for one of max_outstanding places (429 when too many wait already). The
        caller releases it when the answer has ended."""
        if self.slots.locked() and self.waiting >= self.cfg.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise APIError(429, f"the router queue is full ({self.cfg.max_queue} waiting); retry later",
                           headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1

    # ---- bookkeeping -------------------------------------------------------------------
    def record(self, *, key, route, backend, model, usage, started, cache_hit, status, reservation=None):
        usage = usage or {}
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        rc = self.pools[route].route
        cost = 0.0 if cache_hit else (p * rc.price_in + c * rc.price_out) / 1e6
        self.ledger.record(api_key=key, route=route, backend=backend, model=model, prompt_tokens=p,
                           completion_tokens=c, latency_s=time.time() - started, cache_hit=cache_hit,
                           status=status, cost=cost)
        _settle(self.limiter, reservation, p + c)
        self.metrics.requests.labels(route, backend or "cache", str(status)).inc()
        self.metrics.model_requests.labels(backend or "cache", model or "").inc()
        self.metrics.latency.labels(route).observe(time.time() - started)
        self.recent.append({"t": time.time(), "latency": time.time() - started, "backend": backend, "cost": cost})
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
        key = request.state.tenant
        reservation = await self.admit(key, estimate_tokens(body))
        try:
            return await self._handle(request, path, body, key, reservation, started)
        except BaseException:
            _settle(self.limiter, reservation, 0)
            raise

    async def _handle(self, request, path, body, key, reservation, started):
        kind = protocol_of(path)
        route, reason = self.choose_route(body)
        self.metrics.decisions.labels(route, reason).inc()
        pool = self.pools[route]
        wanted = body.get("model") if isinstance(body.get("model"), str) else None
        live = pool.healthy(wanted)
        upstream_model = pool.route.model or (wanted if pool.serves(wanted) else None) or \
            (live[0].model if live else None) or wanted
        stream = is_streaming(path, body)
        headers = {"x-tokenmill-route": route}
        done = dict(key=key, route=route, model=upstream_model, started=started, reservation=reservation)

        ckey = cache_key(key, path, route, upstream_model, body) if self.cache and kind == "openai" else None
        if ckey:
            cached = await self.cache.get(ckey)
            self.metrics.cache.labels("hit" if cached else "miss").inc()
            if cached:
                headers["x-tokenmill-cache"] = "hit"
                self.record(backend=None, usage=json.loads(cached).get("usage"), cache_hit=True, status=200, **done)
                if stream:
                    return StreamingResponse(replay_sse(cached, path, body), media_type="text/event-stream",
                                             headers=headers)
                return Response(cached, media_type="application/json", headers=headers)
        headers["x-tokenmill-cache"] = "miss" if ckey else "skip"

        upstream = dict(body, model=upstream_model) if kind != "tgi" else dict(body)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        wants_continuous = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))
        if stream and path in ("/v1/chat/completions", "/v1/completions"):
            # ask for usage so that the ledger can count; dropped again if not asked for
            upstream["stream_options"] = dict(body.get("stream_options") or {}, include_usage=True)
        affinity = affinity_key(body, self.cfg.affinity_prefix_chars)
        candidates = pool.order(self.cfg.policy, affinity, self.cfg.affinity_max_imbalance, upstream_model)
        if not candidates:
            raise APIError(503, f"no healthy backend for route `{route}`", headers={"Retry-After": "1"})
        await self.acquire_slot()
        handed_over = False  # to a relay, which releases the slot when the stream ends
        try:
            attempts = candidates[:self.cfg.max_retries + 1]
            for i, backend in enumerate(attempts):
                if i:
                    self.metrics.retries.labels(route).inc()
                backend.outstanding += 1
                resp, relayed = None, False
                try:
                    req = self.client.build_request("POST", backend.url + path, json=upstream,
                                                    headers=self.upstream_headers(backend, key))
                    try:
                        resp = await until_disconnect(request, self.client.send(req, stream=True))
                    except AttributeError as e:
                        # httpcore, when the backend's socket goes away while it connects (a
                        # replica killed mid-burst: "'NoneType' object has no attribute
                        # 'getpeername'"); a connection failure like any other, so retried
                        raise httpx.ConnectError(f"connection lost while connecting: {e}") from e
                    if resp.status_code in _RETRYABLE and i + 1 < len(attempts):
                        backend.mark_failed(f"HTTP {resp.status_code}")
                        continue
                    if resp.status_code != 200 or not stream:
                        # a client that leaves while we wait closes the upstream connection,
                        # which cancels the request there
                        content = await until_disconnect(request, resp.aread())
                        usage = _with_prompt(usage_of(content, path), resp) if resp.status_code == 200 else None
                        if ckey and resp.status_code == 200:
                            await self.cache.set(ckey, content)
                        self.record(backend=backend.url, usage=usage, cache_hit=False, status=resp.status_code,
                                    **done)
                        headers["x-tokenmill-backend"] = backend.url
                        _pass_replica(resp, headers)
                        return Response(content, status_code=resp.status_code, headers=headers,
                                        media_type=resp.headers.get("content-type", "application/json"))
                    lines = resp.aiter_lines()
                    first = await until_disconnect(request, anext(lines))  # the backend really answers
                    relayed = True
                except (httpx.HTTPError, StopAsyncIteration) as e:
                    backend.mark_failed(f"{type(e).__name__}: {e}")
                    continue
                finally:
                    backend.outstanding -= 1
                    if resp is not None and not relayed:
                        await resp.aclose()
                backend.outstanding += 1  # held again until the relay ends
                headers["x-tokenmill-backend"] = backend.url
                _pass_replica(resp, headers)
                relay = _Relay(self, resp, first, lines, backend, path, ckey,
                               StreamAccumulator(path, wants_usage, wants_continuous), done)
                handed_over = True
                return StreamingResponse(relay.lines(), headers=headers, background=BackgroundTask(relay.finish),
                                         media_type=resp.headers.get("content-type", "text/event-stream"))
        finally:
            if not handed_over:
                self.slots.release()
        self.metrics.requests.labels(route, "none", "503").inc()
        raise APIError(503, f"every backend of route `{route}` failed; retry later",
                       headers={"Retry-After": "1"})


    async def passthrough(self, request: Request, path: str):
        """Model metadata (Ollama tags/show/ps/version, TGI info) and the tokenizer's and the
        explorer's routes: from the first healthy backend, counted against the tenant's limits
        and written to the ledger (prompt tokens: what the backend says it tokenized)."""
        started, tenant = time.time(), request.state.tenant
        content = await request.body()
        try:
            body = json.loads(content) if content else {}
        except ValueError as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from e
        reservation = await self.admit(tenant, estimate_tokens(body) if isinstance(body, dict) and body else 0)
        model = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        model = model if isinstance(model, str) else None
        route = next((n for n, p in self.pools.items() if p.serves(model)), next(iter(self.pools)))
        live = self.pools[route].healthy(model)
        done = dict(key=tenant, route=route, model=model, started=started, reservation=reservation)
        if not live:
            self.record(backend=None, usage=None, cache_hit=False, status=503, **done)
            raise APIError(503, "no healthy backend", headers={"Retry-After": "1"})
        if path in ("/api/tags", "/api/ps"):  # the models of every backend
            return await self._merged(path, tenant, done)
        b = live[0]
        try:
            resp = await self.client.request(request.method, b.url + path, content=content,
                                             headers={**self.upstream_headers(b, tenant),
                                                      "content-type": "application/json"})
        except httpx.HTTPError as e:
            b.mark_failed(f"{type(e).__name__}: {e}")
            self.record(backend=b.url, usage=None, cache_hit=False, status=503, **done)
            raise APIError(503, f"the backend failed: {type(e).__name__}") from e
        self.record(backend=b.url, usage=_with_prompt(_tokenized(resp), resp), cache_hit=False,
                    status=resp.status_code, **done)
        return Response(resp.content, status_code=resp.status_code,
                        media_type=resp.headers.get("content-type", "application/json"))


    async def _merged(self, path: str, tenant: str, done: dict):
        backends = [b for p in self.pools.values() for b in p.healthy()]

        async def one(b):
            try:
                r = await self.client.get(b.url + path, headers=self.upstream_headers(b, tenant))
                return r.json().get("models") or [] if r.status_code == 200 else []
            except (httpx.HTTPError, ValueError, AttributeError):
                return []
        seen, models = set(), []
        for listed in await asyncio.gather(*(one(b) for b in backends)):
            for m in listed:
                if isinstance(m, dict) and m.get("name") not in seen:
                    seen.add(m.get("name"))
                    models.append(m)
        self.record(backend="all", usage=None, cache_hit=False, status=200, **done)
        return JSONResponse({"models": models})


class _Relay:
    """One stream passed from a backend to a client. finish() runs exactly once, whether the
    stream ended, failed, or was never started because the client had already gone: it
    releases the slot and the backend, closes the upstream response and writes the ledger."""

    def __init__(self, router: Router, resp, first, lines, backend, path, ckey, acc, done):
        self.router, self.resp, self.first, self.upstream = router, resp, first, lines
        self.backend, self.path, self.ckey, self.acc, self.done = backend, path, ckey, acc, done
        self.finished = False
        self.upstream_failed = False

    async def lines(self):
        acc = self.acc
        try:
            line = self.first
            while True:
                out = acc.feed(line)
                if out is not None:
                    yield out + "\n"
                try:
                    line = await anext(self.upstream)
                except StopAsyncIteration:
                    self.upstream_failed = not acc.done  # ended without its last chunk
                    break
        except httpx.HTTPError as e:
            self.upstream_failed = True
            self.backend.mark_failed(f"{type(e).__name__}: {e}")
            yield stream_error(self.path, 502, "the backend failed mid-stream")
        finally:
            await self.finish()

    async def finish(self):
        if self.finished:
            return
        self.finished = True
        r = self.router
        self.backend.outstanding -= 1
        r.slots.release()
        await self.resp.aclose()
        ok = self.acc.done
        # a stream that neither ended nor failed upstream was cut by its client; the client is
        # billed the tokens it was sent (the counts in the last chunk). The disconnect may cancel
        # the response while it awaits send, outside this generator, so it is not seen here.
        status = 200 if ok else 502 if self.upstream_failed else 499
        r.record(backend=self.backend.url, usage=_with_prompt(self.acc.usage, self.resp), cache_hit=False,
                 status=status, **self.done)
        if ok and self.ckey and self.acc.cacheable:
            await r.cache.set(self.ckey, self.acc.as_response(self.done["model"]))


async def _maybe(value):
    """The in-memory limiter answers at once; the Redis one is awaited."""
    return await value if asyncio.iscoroutine(value) else value


_BACKGROUND: set = set()


def _settle(limiter, reservation, n: int) -> None:
    done = limiter.settle(reservation, n)
    if asyncio.iscoroutine(done):  # Redis: in the background, the answer does not wait for it
        task = asyncio.get_running_loop().create_task(done)
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)


def _with_prompt(usage: dict | None, resp) -> dict | None:
    """The backend's prompt token count (x-tokenmill-prompt-tokens) where the protocol's own
    usage has none (TGI, a stream cut before its last chunk)."""
    told = resp.headers.get("x-tokenmill-prompt-tokens", "")
    if not told.isdigit():
        return usage
    usage = dict(usage or {})
    if not usage.get("prompt_tokens"):
        usage["prompt_tokens"] = int(told)
    return usage


def _tokenized(resp) -> dict | None:
    """/tokenize and count_tokens answer a count; the explorer its tokens: billed as prompt tokens."""
    try:
        obj = resp.json()
    except ValueError:
        return None
    if isinstance(obj, dict):  # /tokenize: count; Anthropic's count_tokens: input_tokens
        n = obj.get("count", obj.get("input_tokens", len(obj["tokens"]) if isinstance(obj.get("tokens"), list) else None))
        return {"prompt_tokens": n} if isinstance(n, int) else None
    return None


def _pass_replica(resp, headers: dict) -> None:
    """Ray Serve replicas name themselves; the client may want to know which answered."""
    if "x-tokenmill-replica" in resp.headers:
        headers["x-tokenmill-replica"] = resp.headers["x-tokenmill-replica"]


def create_router_app(cfg: RouterConfig, transports: dict | None = None, ledger=None) -> FastAPI:
    """transports: {URL prefix: httpx transport} for backends reached without a socket (the
    Ray Serve engine deployment); ledger: a shared ledger instead of the local SQLite file."""
    router = Router(cfg, ledger)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        router.slots = asyncio.Semaphore(cfg.max_outstanding)
        router.client = httpx.AsyncClient(timeout=httpx.Timeout(cfg.request_timeout_s, connect=2.0),
                                          limits=httpx.Limits(max_connections=cfg.max_outstanding + 16),
                                          mounts=transports or None)
        await asyncio.gather(*(b.check(router.client, cfg.health_timeout_s) for p in router.pools.values()
                               for b in p.backends))
        checker = asyncio.create_task(health_loop(list(router.pools.values()), cfg.health_interval_s,
                                                  router.client, cfg.health_timeout_s))
        feed = asyncio.create_task(app.state.feed.feed.run())
        yield
        feed.cancel()
        checker.cancel()
        await router.client.aclose()
        if router.cache:
            await router.cache.close()
        router.ledger.close()

    app = FastAPI(title="tokenmill router", lifespan=lifespan)
    app.state.router = router
    app.state.feed = RouterFeed(router)
    app.include_router(dashboard_routes)
    mount_pages(app)

    install_error_handlers(app)
    app.add_middleware(Gate, rules=GateRules(
        tenant=router.tenant_of, max_body_bytes=cfg.max_body_bytes,
        is_open=lambda method, path: path in ("/health", "/metrics") or is_public(method, path)))

    def proxy(path: str):
        async def route(request: Request):
            return await router.handle(request, path)
        route.__name__ = "proxy_" + (path.strip("/").replace("/", "_") or "root")
        return route

    for path in ("/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate",
                 "/generate", "/generate_stream", "/", "/v1/responses", "/v1/messages", "/v1/embeddings",
                 "/api/embed", "/api/embeddings"):
        app.post(path)(proxy(path))

    def metadata(path: str):
        async def route(request: Request):
            return await router.passthrough(request, path)
        route.__name__ = "meta_" + path.strip("/").replace("/", "_")
        return route

    for path in ("/api/tags", "/api/ps", "/api/version", "/info", "/tokenmill/info"):
        app.get(path)(metadata(path))
    for path in ("/api/show", "/tokenize", "/detokenize", "/tokenmill/explain", "/v1/messages/count_tokens"):
        app.post(path)(metadata(path))

    # stored Responses: every backend of one machine shares the store (server/response_store.py);
    # the tenant's salt header tells the backend whose they are
    async def stored_response(request: Request, rid: str):
        return await router.passthrough(request, request.url.path)
    app.api_route("/v1/responses/{rid}", methods=["GET", "DELETE"])(stored_response)
    app.get("/v1/responses/{rid}/input_items")(stored_response)

    @app.get("/v1/models")
    async def models(request: Request):
        data = [{"id": name, "object": "model", "owned_by": "tokenmill-router"} for name in router.pools]
        if router.hybrid:
            data.insert(0, {"id": "auto", "object": "model", "owned_by": "tokenmill-router"})
        served = {m for p in router.pools.values() for b in p.healthy() for m in (b.models or {b.model}) if m}
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
        text = router.metrics.render()
        if cfg.include_backend_metrics:  # one engine behind us (Ray Serve): its metrics too
            live = [b for p in router.pools.values() for b in p.healthy()]
            if live:
                with contextlib.suppress(httpx.HTTPError):
                    r = await router.client.get(live[0].url + "/metrics", headers=live[0].headers(), timeout=5.0)
                    if r.status_code == 200:
                        text += r.content
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return app
