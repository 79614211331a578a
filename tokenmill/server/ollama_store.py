"""Ollama's model-store routes: /api/tags, /api/ps, /api/show, /api/copy, /api/delete, /api/pull.
They read the store's files (server/model_pool.py, store/catalog.py) and load nothing."""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from ..api.errors import APIError
from ..api.sse import ndjson
from ..store.catalog import StoreError, StoredModel
from .serving import off_loop

router = APIRouter()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _store_call(fn, *args):
    try:
        return fn(*args)
    except StoreError as e:
        raise APIError(e.status, str(e), param="model") from e


async def _entry(state, m: StoredModel) -> dict:
    digest = await off_loop(state.pool.store.digest, m)  # the first one reads the whole file
    return {"name": m.name, "model": m.name, "modified_at": _iso(m.modified_at), "size": m.size,
            "digest": digest, "details": m.details}


@router.get("/api/tags")
async def tags(request: Request):
    state = request.app.state.tm
    listed = await off_loop(state.pool.store.list)
    return {"models": [await _entry(state, m) for m in listed]}


@router.get("/api/ps")
async def ps(request: Request):
    """Loaded models: memory held (measured at load) and when keep_alive unloads them."""
    state = request.app.state.tm
    out = []
    for slot in state.pool.loaded():
        m = await off_loop(_store_call, state.pool.store.resolve, slot.name) if slot.path else None
        entry = await _entry(state, m) if m is not None else {"name": slot.name, "model": slot.name}
        if slot.expires_at is not None:  # idle: keep_alive runs
            expires = _iso(time.time() + max(0.0, slot.expires_at - time.monotonic()))
        elif slot.keep_alive_s is None or slot.pinned:  # kept until room is needed
            expires = "2999-01-01T00:00:00Z"
        else:  # busy: this long after its requests end
            expires = _iso(time.time() + slot.keep_alive_s)
        out.append({**entry, "size": slot.size_bytes, "size_vram": 0, "expires_at": expires,
                    "context_length": slot.engine.max_model_len})
    return {"models": out}


class NameRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    name: str | None = None  # older clients
    verbose: bool | None = None


def _model_info(path: str, verbose: bool) -> tuple[dict, str, bool]:
    """(model_info, chat template, whether the vocabulary has think tags) from the files."""
    if os.path.isdir(path):
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        tmpl = ""
        for name in ("tokenizer_config.json",):
            try:
                with open(os.path.join(path, name)) as f:
                    tmpl = json.load(f).get("chat_template") or ""
            except (OSError, ValueError):
                pass
        arch = cfg.get("model_type", "unknown")
        info = {"general.architecture": arch, **{f"{arch}.{k}": v for k, v in cfg.items()
                                                 if isinstance(v, (int, float, str, bool))}}
        return info, tmpl if isinstance(tmpl, str) else "", False
    from ..model.loader.gguf_header import read_header
    meta, tensors, buf = read_header(path)
    buf.close()
    tokens = meta.get("tokenizer.ggml.tokens") or []
    think = "<think>" in tokens and "</think>" in tokens
    info = {k: (v if verbose or not isinstance(v, list) or len(v) <= 64 else None) for k, v in meta.items()
            if k != "tokenizer.chat_template"}
    info["general.parameter_count"] = sum(_count(t.shape) for t in tensors)
    return info, meta.get("tokenizer.chat_template") or "", think


async def _named(state, body: NameRequest) -> StoredModel:
    name = body.model or body.name
    if not name:
        raise APIError(400, "you must give a model name", param="model")
    return await off_loop(_store_call, state.pool.store.resolve, name)


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@router.post("/api/show")
async def show(body: NameRequest, request: Request):
    state = request.app.state.tm
    m = await _named(state, body)
    info, tmpl, think = await off_loop(_model_info, m.path, bool(body.verbose))
    slot = state.pool.slots.get(m.name)
    if slot is not None and slot.engine is not None:
        think = slot.reasoning
    elif state.settings.reasoning_parser != "auto":
        think = state.settings.reasoning_parser == "think"
    caps = ["completion", "embedding"] + (["tools"] if "tools" in tmpl else []) + (["thinking"] if think else [])
    return {"modelfile": f"FROM {m.path}\n", "parameters": "", "license": "", "template": tmpl,
            "details": m.details, "model_info": info, "capabilities": caps, "modified_at": _iso(m.modified_at)}


class CopyRequest(BaseModel):
    source: str
    destination: str


@router.post("/api/copy")
async def copy(body: CopyRequest, request: Request):
    await off_loop(_store_call, request.app.state.tm.pool.store.copy, body.source, body.destination)
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(body: NameRequest, request: Request):
    state = request.app.state.tm
    m = await _named(state, body)
    name = body.model or body.name
    slot = state.pool.slots.get(m.name)
    if slot is not None and slot.leases > 0:
        raise APIError(409, f"model '{name}' is answering requests; delete it when they have ended")
    await state.pool.unload(m.name)
    await off_loop(_store_call, state.pool.store.delete, name)
    return Response(status_code=200)


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    name: str | None = None
    stream: bool = True
    insecure: bool | None = None


@router.post("/api/pull")
async def pull(body: PullRequest, request: Request):
    """Downloads a GGUF from a Hugging Face repository (`hf.co/OWNER/REPO[:QUANT or FILE]`, or
    `OWNER/REPO[:...]`) into the store with huggingface_hub: progress as NDJSON lines, an
    interrupted download resumed, HF_ENDPOINT honoured."""
    from ..store.pull import PullError, Puller
    state = request.app.state.tm
    name = body.model or body.name
    if not name:
        raise APIError(400, "you must give a model name", param="model")
    try:
        puller = Puller(state.pool.store, name)
    except PullError as e:
        raise APIError(400, str(e), param="model") from e
    events = puller.events()
    if body.stream:
        async def lines():
            async for event in events:
                yield ndjson(event)
        return StreamingResponse(lines(), media_type="application/x-ndjson")
    last = None
    async for event in events:
        last = event
        if "error" in event:
            return JSONResponse(event, status_code=404 if "not found" in event["error"] else 400)
    return last
