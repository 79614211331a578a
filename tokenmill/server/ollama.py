"""Ollama-compatible routes: /api/chat, /api/generate (NDJSON streams by default, as Ollama
does), /api/tags, /api/show, /api/version, /api/ps."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..model.loader.chat_template import ChatTemplateError
from .errors import APIError, pydantic_message
from .serving import final_output, generate, make_params

router = APIRouter()

# Ollama's documented defaults where the request gives no option
_DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9}
_OPTION_MAP = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
               "num_predict": "max_tokens", "stop": "stop", "seed": "seed",
               "repeat_penalty": "repetition_penalty", "presence_penalty": "presence_penalty",
               "frequency_penalty": "frequency_penalty"}
# options that only tune llama.cpp's runtime; they have no meaning here and change no output
_RUNTIME_OPTIONS = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap",
                    "use_mlock", "numa", "low_vram", "num_keep", "vocab_only"}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant"]
    content: str = ""
    images: list[Any] | None = None
    tool_calls: list[Any] | None = None


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    stream: bool = True
    options: dict[str, Any] | None = None
    format: Any = None
    keep_alive: Any = None
    think: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class ChatRequest(_Base):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Any] | None = None


class GenerateRequest(_Base):
    prompt: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[Any] | None = None
    suffix: str | None = None


def _state(request):
    return request.app.state.tm


async def _parse(request: Request, model: type[BaseModel]):
    """Ollama accepts a JSON body whatever its content type (curl -d sends a form type)."""
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except ValueError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from e
    try:
        return model.model_validate(data)
    except ValidationError as e:
        message, _ = pydantic_message(e.errors())
        raise APIError(400, message) from e


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _refuse_unsupported(body, names):
    for name in names:
        if getattr(body, name, None) not in (None, False, [], "", {}):
            raise APIError(400, f"`{name}` is not supported by this server yet")


def _params(options: dict | None):
    opts = dict(options or {})
    unknown = set(opts) - set(_OPTION_MAP) - _RUNTIME_OPTIONS
    if unknown:
        raise APIError(400, f"unsupported option(s): {', '.join(sorted(unknown))}")
    kw = dict(_DEFAULTS)
    for k, v in opts.items():
        if k in _OPTION_MAP:
            kw[_OPTION_MAP[k]] = v
    if kw.get("max_tokens") is not None and kw["max_tokens"] < 0:
        kw["max_tokens"] = None  # -1 (infinite) and -2 (fill the context): until the context ends
    if isinstance(kw.get("stop"), str):
        kw["stop"] = [kw["stop"]]
    try:
        return make_params(**kw)
    except TypeError as e:
        raise APIError(400, f"bad option value: {e}") from e


def _final_stats(out, started: float) -> dict:
    m = out.metrics
    now = time.time()
    first = m.first_token_time or now
    sched = m.first_scheduled_time or m.arrival_time
    c = out.outputs[0]
    return {"done": True, "done_reason": c.finish_reason, "total_duration": int((now - started) * 1e9),
            "load_duration": 0, "prompt_eval_count": len(out.prompt_token_ids),
            "prompt_eval_duration": int(max(0.0, first - sched) * 1e9),
            "eval_count": len(c.token_ids), "eval_duration": int(max(0.0, now - first) * 1e9)}


async def _respond(request, state, body, prompt_ids, kind: str):
    params = _params(body.options)
    stream = await generate(state, prompt_ids, params)
    started = time.time()
    model = body.model

    def piece(text: str) -> dict:
        if kind == "chat":
            return {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": text}}
        return {"model": model, "created_at": _now(), "response": text}

    if body.stream:
        async def ndjson():
            try:
                async for out in stream:
                    c = out.outputs[0]
                    if c.text_delta:
                        yield json.dumps({**piece(c.text_delta), "done": False}) + "\n"
                    if out.finished:
                        yield json.dumps({**piece(""), **_final_stats(out, started)}) + "\n"
            except APIError as e:
                yield json.dumps({"error": e.message}) + "\n"
        return StreamingResponse(ndjson(), media_type="application/x-ndjson")

    final = await final_output(request, stream)
    return JSONResponse({**piece(final.outputs[0].text), **_final_stats(final, started)})


@router.post("/api/chat")
async def chat(request: Request):
    body = await _parse(request, ChatRequest)
    state = _state(request)
    state.check_model(body.model)
    _refuse_unsupported(body, ["format", "tools", "think", "logprobs", "top_logprobs"])
    for m in body.messages:
        if m.images or m.tool_calls:
            raise APIError(400, "images and tool calls in messages are not supported yet")
    engine = state.get_engine()
    if not body.messages:  # Ollama answers an empty chat by loading the model
        return JSONResponse({"model": body.model, "created_at": _now(),
                             "message": {"role": "assistant", "content": ""}, "done": True,
                             "done_reason": "load"})
    try:
        ids = engine.tokenizer.encode_chat([{"role": m.role, "content": m.content} for m in body.messages])
    except (ChatTemplateError, ValueError) as e:
        raise APIError(400, str(e)) from e
    return await _respond(request, state, body, ids, "chat")


@router.post("/api/generate")
async def generate_route(request: Request):
    body = await _parse(request, GenerateRequest)
    state = _state(request)
    state.check_model(body.model)
    _refuse_unsupported(body, ["format", "template", "context", "images", "suffix", "think", "logprobs",
                               "top_logprobs"])
    engine = state.get_engine()
    if not body.prompt:
        return JSONResponse({"model": body.model, "created_at": _now(), "response": "", "done": True,
                             "done_reason": "load"})
    tok = engine.tokenizer
    if body.raw:
        ids = tok.encode(body.prompt)
    else:
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + \
                   [{"role": "user", "content": body.prompt}]
        try:
            ids = tok.encode_chat(messages)
        except (ChatTemplateError, ValueError) as e:
            raise APIError(400, str(e)) from e
    return await _respond(request, state, body, ids, "generate")


def _details(engine) -> dict:
    cfg = engine.model_config
    n = engine.num_parameters
    size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
    return {"parent_model": "", "format": "gguf" if engine.model_path.endswith(".gguf") else "safetensors",
            "family": cfg.architecture, "families": [cfg.architecture], "parameter_size": size,
            "quantization_level": engine.quantization}


def _model_entry(state, engine) -> dict:
    return {"name": state.model_name, "model": state.model_name,
            "modified_at": datetime.fromtimestamp(state.started, timezone.utc).isoformat(),
            "size": engine.file_size, "digest": engine.digest, "details": _details(engine)}


@router.get("/api/tags")
async def tags(request: Request):
    state = _state(request)
    return {"models": [_model_entry(state, state.get_engine())]}


@router.get("/api/ps")
async def ps(request: Request):
    state = _state(request)
    engine = state.get_engine()
    return {"models": [{**_model_entry(state, engine), "expires_at": "2999-01-01T00:00:00Z",
                        "size_vram": 0}]}


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    name: str | None = None  # older clients
    verbose: bool | None = None


@router.post("/api/show")
async def show(request: Request):
    body = await _parse(request, ShowRequest)
    state = _state(request)
    state.check_model(body.model or body.name)
    engine = state.get_engine()
    cfg = engine.model_config
    a = cfg.architecture
    tmpl = engine.tokenizer.chat_template
    return {"modelfile": f"FROM {engine.model_path}\n", "parameters": "", "license": "",
            "template": tmpl.source if tmpl else "", "details": _details(engine),
            "model_info": {"general.architecture": a, "general.parameter_count": engine.num_parameters,
                           f"{a}.context_length": engine.max_model_len,
                           f"{a}.embedding_length": cfg.hidden_size, f"{a}.block_count": cfg.num_layers,
                           f"{a}.attention.head_count": cfg.num_heads,
                           f"{a}.attention.head_count_kv": cfg.num_kv_heads},
            "capabilities": ["completion"], "modified_at": _now()}


@router.get("/api/version")
async def version():
    return {"version": __version__}
