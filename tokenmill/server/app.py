"""The FastAPI application: one engine client, every protocol (OpenAI, Anthropic, Ollama, TGI),
operations routes.

The model loads in a background thread after the server starts listening, so /health can
answer 503 while it loads and 200 once it is ready.
"""
from __future__ import annotations

import asyncio
import os
import threading
import traceback

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ..config import EngineConfig
from ..api.auth import KeyRing
from ..api.errors import install_error_handlers
from ..api.gate import Gate, GateRules
from .lifecycle import watch_engine
from .metrics import Metrics, watch_loop_lag
from .serving import ServerSettings, ServerState
from ..web import is_public, mount_pages

_OPEN_PATHS = {"/health"}
_OPERATIONS = {"/health", "/metrics", "/version"}  # answered while draining


def _recommend_sampling(state: ServerState, engine) -> None:
    """The model's recommended sampling, under serve --default-sampling; and whether its
    answers carry reasoning to split out (a vocabulary with think tags, or --reasoning-parser)."""
    from ..model.loader.sampling_defaults import parse, recommended
    from .reasoning import has_think_tokens
    choice = state.settings.reasoning_parser
    state.reasoning = choice == "think" or (choice == "auto" and has_think_tokens(engine.tokenizer))
    if state.settings.embedding_pooling == "auto":
        from ..model.loader.pooling import pooling_of
        state.pooling = pooling_of(getattr(engine, "model_path", None))[0]
    else:
        state.pooling = state.settings.embedding_pooling
    state.sampling, state.sampling_source = recommended(engine.model_path)
    if state.settings.default_sampling:
        state.sampling = {**state.sampling, **parse(state.settings.default_sampling)}
        state.sampling_source = "serve --default-sampling"


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
    if settings.generation_config not in ("none", "auto"):
        raise ValueError("--generation-config must be none or auto")
    if settings.embedding_pooling not in ("auto", "mean", "last", "cls"):
        raise ValueError("--embedding-pooling must be auto, mean, last or cls")
    if settings.reasoning_parser not in ("auto", "think", "none"):
        raise ValueError("--reasoning-parser must be auto, think or none")
    if settings.default_sampling:
        from ..model.loader.sampling_defaults import parse
        parse(settings.default_sampling)  # refused at start, not at the first request
    state = ServerState(settings=settings, metrics=None)
    state.metrics = Metrics(state)
    state.model_name = served_name(config, settings)

    def load():
        from ..engine.async_engine import AsyncLLMEngine
        try:
            engine = AsyncLLMEngine.from_config(config, settings.max_queue, settings.max_unread_tokens)
            _recommend_sampling(state, engine)
            state.engine = engine
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
        lag = asyncio.create_task(watch_loop_lag(state.metrics))
        yield
        lag.cancel()
        feed.cancel()
        watcher.cancel()
        if state.engine is not None and hasattr(state.engine, "shutdown"):
            state.engine.shutdown()

    app = FastAPI(title="tokenmill", version=__version__, lifespan=lifespan)
    app.state.tm = state
    state.engine = engine
    if engine is not None and getattr(engine, "model_path", None):
        _recommend_sampling(state, engine)

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

    from . import anthropic, dashboard, embeddings, explain, ollama, openai, responses, tgi
    app.state.feed = dashboard.ServerFeed(state)
    app.include_router(dashboard.router)
    app.include_router(explain.router)
    mount_pages(app)
    app.include_router(openai.router)
    app.include_router(ollama.router)
    app.include_router(tgi.router)
    app.include_router(anthropic.router)
    app.include_router(responses.router)
    app.include_router(embeddings.router)
    keys = KeyRing({settings.api_key: "default"} if settings.api_key else None)
    app.add_middleware(Gate, rules=GateRules(
        tenant=keys.tenant, is_open=lambda method, path: path in _OPEN_PATHS or is_public(method, path),
        max_body_bytes=settings.max_body_bytes, draining=lambda: state.draining,
        while_draining=frozenset(_OPERATIONS), count=lambda status: state.metrics.http.labels(str(status)).inc()))
    return app
