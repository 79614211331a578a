"""Ollama-compatible routes: /api/chat, /api/generate (NDJSON streams by default, as Ollama
does), /api/version; the store's routes (/api/tags, /api/ps, /api/show, ...) are in
ollama_store.py."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .keep_alive import parse_keep_alive
from .model_pool import use_model
from ..store.catalog import canonical
from .. import __version__
from ..sampling_params import SamplingParams
from . import structured, tools
from ..api.errors import APIError, refuse_fields
from ..api.sse import ndjson, stream_error
from .reasoning import prompt_opens_thought, split_stream
from .serving import GenerationRequest, chat_prompt_ids, final_output, make_params, off_loop, submit

router = APIRouter()


class Options(BaseModel):
    """Ollama's `options`, with Ollama's documented defaults. Options that only tune
    llama.cpp's runtime are accepted and change nothing here."""
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(default=0.8, ge=0, le=100)
    top_k: int = Field(default=40, ge=-1)  # <= 0: off
    top_p: float = Field(default=0.9, gt=0, le=1)
    min_p: float = Field(default=0.0, ge=0, le=1)
    num_predict: int = Field(default=-1, ge=-2)   # -1: until EOS; -2: until the context is full
    repeat_penalty: float = Field(default=1.1, gt=0, le=100)
    repeat_last_n: int = Field(default=64, ge=-1)  # penalties look this far back; 0: off; -1: num_ctx
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    seed: int | None = None
    stop: list[str] | str | None = None
    num_ctx: int | None = Field(default=None, ge=1)  # None: the server's context length
    # llama.cpp runtime knobs: no meaning here
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    num_keep: int | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    numa: bool | None = None
    low_vram: bool | None = None
    vocab_only: bool | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[Any] | None = None
    tool_calls: list[Any] | None = None


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    stream: bool = True
    options: Options | None = None
    format: Any = None
    keep_alive: Any = None
    think: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class ChatRequest(_Base):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _params(o: Options | None, num_prompt: int, max_model_len: int, processors=()) -> SamplingParams:
    o = o or Options()
    limit = min(o.num_ctx or max_model_len, max_model_len)
    if num_prompt >= limit:
        raise APIError(400, f"the prompt has {num_prompt} tokens, but the context length (num_ctx) is {limit} "
                            f"tokens and at least one must be left to generate")
    room = limit - num_prompt
    max_tokens = room if o.num_predict < 0 else min(max(o.num_predict, 1), room)
    last_n = limit if o.repeat_last_n == -1 else o.repeat_last_n
    if last_n == 0:  # Ollama: 0 turns the penalties off
        rep, pres, freq = 1.0, 0.0, 0.0
    else:
        rep, pres, freq = o.repeat_penalty, o.presence_penalty, o.frequency_penalty
    return make_params(temperature=o.temperature, top_k=max(o.top_k, 0), top_p=o.top_p, min_p=o.min_p,
                       max_tokens=max_tokens, repetition_penalty=rep, presence_penalty=pres,
                       frequency_penalty=freq, penalty_last_n=max(last_n, 0), seed=o.seed,
                       stop=[o.stop] if isinstance(o.stop, str) else o.stop, logits_processors=list(processors))


def _final_stats(out, started: float, load_s: float = 0.0) -> dict:
    m = out.metrics
    now = time.time()
    first = m.first_token_time or now
    sched = m.first_scheduled_time or m.arrival_time
    c = out.outputs[0]
    return {"done": True, "done_reason": c.finish_reason, "total_duration": int((now - started) * 1e9),
            "load_duration": int(load_s * 1e9), "prompt_eval_count": len(out.prompt_token_ids),
            "prompt_eval_duration": int(max(0.0, first - sched) * 1e9),
            "eval_count": len(c.token_ids), "eval_duration": int(max(0.0, now - first) * 1e9)}


async def _respond(request, state, body, prompt_ids, kind: str, tool_schemas=None):
    load_s = getattr(request.state, "load_duration", 0.0)
    started = time.time() - load_s  # total_duration: the load, the queue, the prompt, the answer
    engine = state.get_engine()
    spec = structured.ollama_spec(body.format)
    if tool_schemas:
        if spec is not None:
            raise APIError(400, "tools and format cannot be combined")
        spec = tools.grammar_for(tool_schemas, "auto", None, True)
    grammar = await structured.processors(engine, spec)
    params = _params(body.options, len(prompt_ids), engine.max_model_len, grammar)
    stream = await submit(state, request, GenerationRequest(prompt_ids, params, body.stream))
    if state.reasoning:  # a thinking model: its reasoning goes in `thinking`
        stream = split_stream(stream, prompt_opens_thought(engine.tokenizer, prompt_ids))
    model = body.model

    def piece(text: str, calls=None, thinking: str = "") -> dict:
        if kind == "chat":
            message = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:  # Ollama's shape: arguments as an object
                message["tool_calls"] = [{"function": {"name": c["function"]["name"],
                                                       "arguments": json.loads(c["function"]["arguments"])}}
                                         for c in calls]
            return {"model": model, "created_at": _now(), "message": message}
        return {"model": model, "created_at": _now(), "response": text, **({"thinking": thinking} if thinking else {})}

    def calls_of(text):
        return tools.parse_calls(text, tool_schemas, "auto") if tool_schemas else None

    if body.stream:
        # the router asks for the counts so far in every line, to bill a client that hangs up
        counting = request.headers.get("x-tokenmill-usage") == "continuous"

        async def lines():
            try:
                async for out in stream:
                    c = out.outputs[0]
                    if getattr(c, "reasoning_delta", ""):
                        yield ndjson({**piece("", thinking=c.reasoning_delta), "done": False})
                    if c.text_delta and not tool_schemas:  # with tools: known only at the end
                        counts = {"prompt_eval_count": len(prompt_ids), "eval_count": len(c.token_ids)} \
                            if counting else {}
                        yield ndjson({**piece(c.text_delta), "done": False, **counts})
                    if out.finished:
                        calls = calls_of(c.text)
                        if tool_schemas:
                            yield ndjson({**piece("" if calls else c.text, calls), "done": False})
                        yield ndjson({**piece(""), **_final_stats(out, started, load_s)})
            except APIError as e:
                yield stream_error("/api/chat", e.status, e.message)
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    final = await final_output(request, stream)
    text = final.outputs[0].text
    calls = calls_of(text)
    thinking = getattr(final.outputs[0], "reasoning", "")
    return JSONResponse({**piece("" if calls else text, calls, thinking), **_final_stats(final, started, load_s)})


async def _unload_asked(request, body):
    """An empty request with keep_alive 0 unloads the model (at once, or when its running
    requests end), as Ollama's does; None when that is not what was asked."""
    if body.keep_alive is None or parse_keep_alive(body.keep_alive) != 0:
        return None
    pool = request.app.state.tm.pool
    if canonical(body.model) not in pool.names():
        raise APIError(404, f"model '{body.model}' not found", param="model")
    await pool.unload(body.model)
    return _empty_answer(request, body, "unload")


def _empty_answer(request, body, reason: str) -> JSONResponse:
    """The answer to an empty chat or prompt: the model was loaded (with the time it took, if
    this request waited for it) or unloaded."""
    done = {"model": body.model, "created_at": _now(), "done": True, "done_reason": reason,
            "load_duration": int(getattr(request.state, "load_duration", 0.0) * 1e9)}
    if isinstance(body, ChatRequest):
        return JSONResponse({**done, "message": {"role": "assistant", "content": ""}})
    return JSONResponse({**done, "response": ""})


def _think(state, body) -> dict:
    """Ollama's `think`: true (or a level) asks a thinking model to think, false asks it not to
    (enable_thinking for its template); a model that cannot think refuses true, as Ollama does."""
    if body.think is None:
        return {}
    if body.think not in (True, False, "low", "medium", "high"):
        raise APIError(400, "think must be true, false, or low, medium or high")
    if body.think is not False and not state.reasoning:
        raise APIError(400, f"\"{body.model}\" does not support thinking")
    return {"enable_thinking": body.think is not False}


@router.post("/api/chat")
async def chat(body: ChatRequest, request: Request):
    if not body.messages and (unloaded := await _unload_asked(request, body)):
        return unloaded
    state = await use_model(request, body.model, body.keep_alive)
    refuse_fields(body, ["logprobs", "top_logprobs"])
    think = _think(state, body)
    for m in body.messages:
        if m.images:
            raise APIError(400, "images in messages are not supported yet")
    tool_schemas = tools.check_tools(body.tools)
    engine = state.get_engine()
    if not body.messages:  # Ollama answers an empty chat by loading the model
        return _empty_answer(request, body, "load")
    messages = []
    for m in body.messages:
        msg = {"role": m.role, "content": m.content}
        if m.tool_calls:
            msg["tool_calls"] = [{"name": (c.get("function") or {}).get("name"),
                                  "arguments": (c.get("function") or {}).get("arguments") or {}}
                                 for c in m.tool_calls if isinstance(c, dict)]
        messages.append(msg)
    messages = tools.prompt_messages(messages, body.tools, "auto" if tool_schemas else "none")
    ids = await off_loop(chat_prompt_ids, engine, messages, False, True, think)
    return await _respond(request, state, body, ids, "chat", tool_schemas)


@router.post("/api/generate")
async def generate_route(body: GenerateRequest, request: Request):
    if not body.prompt and (unloaded := await _unload_asked(request, body)):
        return unloaded
    state = await use_model(request, body.model, body.keep_alive)
    refuse_fields(body, ["template", "context", "images", "suffix", "logprobs", "top_logprobs"])
    think = _think(state, body)
    engine = state.get_engine()
    if not body.prompt:  # and an empty prompt likewise
        return _empty_answer(request, body, "load")
    tok = engine.tokenizer
    if body.raw:
        ids = await off_loop(tok.encode, body.prompt)
    else:
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + \
                   [{"role": "user", "content": body.prompt}]
        ids = await off_loop(chat_prompt_ids, engine, messages, False, True, think)
    return await _respond(request, state, body, ids, "generate")


@router.get("/api/version")
async def version():
    return {"version": __version__}
