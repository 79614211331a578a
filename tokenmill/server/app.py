"""The FastAPI application: one engine client, three protocols, operations routes.

The model loads in a background thread after the server starts listening, so /health can
answer 503 while it loads and 200 once it is ready.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
import traceback

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ..config import EngineConfig
from .errors import error_body, given_api_key, install_error_handlers, key_matches
from .lifecycle import watch_engine
from .metrics import Metrics
from .serving import ServerSettings, ServerState
from ..web import is_public, mount_pages

_OPEN_PATHS = {"/health"}
_OPERATIONS = {"/health", "/metrics", "/version"}  # answered while draining


class Gatekeeper:
    """Pure ASGI middleware (streams and disconnects pass straight through): counts responses
    by status, checks the API key, refuses bodies over the size limit with 413 and new work
    with 503 while the server drains. Ollama bodies are JSON whatever their content type
    (curl -d sends a form type), so /api/ requests are handed on as application/json."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def _reply(self, send, path, status, message, headers=None):
        body = json.dumps(error_body(path, status, message)).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self.state.metrics.http.labels(str(status)).inc()
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        settings = self.state.settings
        headers = dict(scope["headers"])
        if settings.api_key and path not in _OPEN_PATHS and not is_public(scope["method"], path):
            text = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers.items()}
            if not key_matches(given_api_key(text), settings.api_key):
                return await self._reply(send, path, 401, "invalid or missing API key",
                                         {"WWW-Authenticate": "Bearer"})
        if self.state.draining and path not in _OPERATIONS:
            return await self._reply(send, path, 503, "the server is shutting down", {"Retry-After": "1"})
        limit = settings.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await self._reply(send, path, 413, f"request body is larger than {limit} bytes")
        if scope["method"] in ("POST", "PUT", "PATCH"):
            # read the whole body (bounded) up front, then replay it to the app
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return await self._reply(send, path, 413, f"request body is larger than {limit} bytes")
                chunks.append(chunk)
                more = message.get("more_body", False)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()
            inner_receive = replay
            if path.startswith("/api/"):
                scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
                             + [(b"content-type", b"application/json")])
        else:
            inner_receive = receive

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.state.metrics.http.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, inner_receive, counting_send)


def served_name(config: EngineConfig, settings: ServerSettings) -> str:
    if settings.served_model_name:
        return settings.served_model_name
    from ..model.loader import default_model_path
    path = config.model or default_model_path()
    name = os.path.basename(os.path.normpath(path))
    return name[:-5] if name.endswith(".gguf") else name


def create_app(config: EngineConfig, settings: ServerSettings | None = None, engine=None) -> FastAPI:
    """engine: an already-built EngineClient (tests, embedding); else one is loaded from config."""
    settings = settings or ServerSettings()
    state = ServerState(settings=settings, metrics=None)
    state.metrics = Metrics(state)
    state.model_name = served_name(config, settings)

    def load():
        from ..engine.async_engine import AsyncLLMEngine
        try:
            state.engine = AsyncLLMEngine.from_config(config, settings.max_queue)
            w = state.engine.weights
            print(f"tokenmill: {state.model_name}: weights {w['summary']}; KV cache {w['kv_cache_dtype']}", flush=True)
        except Exception as e:  # /health and every route report it
            state.load_error = f"{type(e).__name__}: {e}"
            print(f"tokenmill: model failed to load: {state.load_error}", flush=True)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if state.engine is None:
            threading.Thread(target=load, name="tokenmill-load", daemon=True).start()
        watcher = asyncio.create_task(watch_engine(app))
        feed = asyncio.create_task(app.state.feed.feed.run())
        yield
        feed.cancel()
        watcher.cancel()
        if state.engine is not None and hasattr(state.engine, "shutdown"):
            state.engine.shutdown()

    app = FastAPI(title="tokenmill", version=__version__, lifespan=lifespan)
    app.state.tm = state
    state.engine = engine

    install_error_handlers(app, on_error=lambda request, e: traceback.print_exception(e))

    @app.get("/health")
    async def health():
        if state.engine is None:
            return JSONResponse({"status": "error" if state.load_error else "loading",
                                 "error": state.load_error}, status_code=503)
        if state.engine_error:  # the process exits soon, so that a supervisor restarts it
            return JSONResponse({"status": "error", "error": state.engine_error}, status_code=503)
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return {"status": "ok"}

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    from . import dashboard, explain, ollama, openai, tgi
    app.state.feed = dashboard.ServerFeed(state)
    app.include_router(dashboard.router)
    app.include_router(explain.router)
    mount_pages(app)
    app.include_router(openai.router)
    app.include_router(ollama.router)
    app.include_router(tgi.router)
    app.add_middleware(Gatekeeper, state=state)
    return app
