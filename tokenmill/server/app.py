"""The FastAPI application: one engine client, every protocol (OpenAI, Anthropic, Ollama, TGI),
operations routes.

The model loads in a background thread after the server starts listening, so /health can
answer 503 while it loads and 200 once it is ready.
"""
from __future__ import annotations

import asyncio
import os
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
from .keep_alive import parse_keep_alive
from .model_pool import ModelLeases, ModelPool
from .serving import ServerSettings, ServerState
from ..store.catalog import ModelStore
from ..web import is_public, mount_pages

_OPEN_PATHS = {"/health"}
_OPERATIONS = {"/health", "/metrics", "/version"}  # answered while draining


def served_name(config: EngineConfig, settings: ServerSettings) -> str:
    if settings.served_model_name:
        return settings.served_model_name
    from ..model.loader import default_model_path
    try:
        path = config.model or default_model_path()
    except FileNotFoundError:  # no bundled model: a store of --models alone
        return ""
    name = os.path.basename(os.path.normpath(path))
    return name[:-5] if name.endswith(".gguf") else name


def build_store(config: EngineConfig, settings: ServerSettings, default_name: str,
                default_path: str | None = None, engine_given: bool = False, scan: bool = True) -> ModelStore:
    """The store's directory, the model of --model (or the bundled one; or the engine handed
    to create_app) under its served name, and the NAME=PATH models of --model."""
    named = {}
    try:
        from ..model.loader import default_model_path
        path = default_path if engine_given else config.model or default_model_path()
        if path:
            named[default_name] = path
    except FileNotFoundError:  # no bundled model: the store's directory alone
        pass
    for item in settings.named_models or []:
        name, _, path = item.partition("=")
        named.setdefault(name, os.path.expanduser(path))
    return ModelStore(settings.models, named, scan)


def create_app(config: EngineConfig, settings: ServerSettings | None = None, engine=None,
               scan_store: bool = True) -> FastAPI:
    """engine: an already-built EngineClient (tests, embedding, a Ray replica); else the default
    model is loaded from config. scan_store=False: no models but that one (a Ray replica)."""
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
    state.default_model = served_name(config, settings)
    store = build_store(config, settings, state.default_model, getattr(engine, "model_path", None),
                        engine_given=engine is not None, scan=scan_store)
    state.pool = ModelPool(state, store, config, settings.max_loaded_bytes, parse_keep_alive(settings.keep_alive))
    if engine is not None:  # handed in: it cannot be reloaded, so it is never unloaded
        state.pool.add_loaded(state.default_model, getattr(engine, "model_path", "") or "", engine, pinned=True)
    load_error: list[str] = []
    preloaded = asyncio.Event()

    async def preload():
        """The default model loads at start, as before the store: /health is 200 once it has."""
        try:
            if engine is None and state.default_model in store.paths():
                slot = await state.pool.acquire(state.default_model)
                # kept until a request says otherwise or room is needed
                slot.keep_alive_s = slot.base_keep_alive_s = None
                state.pool.release(slot)
        except Exception as e:  # /health reports it
            load_error.append(getattr(e, "message", None) or f"{type(e).__name__}: {e}")
            print(f"tokenmill: model failed to load: {load_error[0]}", flush=True)
        finally:
            preloaded.set()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        tasks = [asyncio.create_task(preload()), asyncio.create_task(watch_engine(app)), asyncio.create_task(app.state.feed.feed.run()),
                  asyncio.create_task(watch_loop_lag(state.metrics)), asyncio.create_task(state.pool.reap())]
        yield
        for t in tasks:
            t.cancel()
        await state.pool.shutdown()

    app = FastAPI(title="tokenmill", version=__version__, lifespan=lifespan)
    app.state.tm = state

    install_error_handlers(app, on_error=lambda request, e: traceback.print_exception(e))

    @app.get("/health")
    async def health():
        if not preloaded.is_set() or load_error:
            return JSONResponse({"status": "error" if load_error else "loading",
                                 "error": load_error[0] if load_error else None}, status_code=503)
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

    from . import anthropic, dashboard, embeddings, explain, ollama, ollama_store, openai, responses, tgi
    app.state.feed = dashboard.ServerFeed(state)
    app.include_router(dashboard.router)
    app.include_router(explain.router)
    mount_pages(app)
    app.include_router(openai.router)
    app.include_router(ollama.router)
    app.include_router(ollama_store.router)
    app.include_router(tgi.router)
    app.include_router(anthropic.router)
    app.include_router(responses.router)
    app.include_router(embeddings.router)
    keys = KeyRing({settings.api_key: "default"} if settings.api_key else None)
    app.add_middleware(ModelLeases, pool_of=lambda: state.pool)
    app.add_middleware(Gate, rules=GateRules(
        tenant=keys.tenant, is_open=lambda method, path: path in _OPEN_PATHS or is_public(method, path),
        max_body_bytes=settings.max_body_bytes, draining=lambda: state.draining,
        while_draining=frozenset(_OPERATIONS), count=lambda status: state.metrics.http.labels(str(status)).inc()))
    return app
