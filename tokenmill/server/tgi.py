"""Hugging Face TGI-compatible routes: POST /generate, POST /generate_stream (SSE), POST /
(either, by "stream"), GET /info. Enough for huggingface_hub's
InferenceClient(base_url).text_generation(..., stream=..., details=...)."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .model_pool import use_model
from .. import __version__
from . import structured
from ..api.errors import APIError
from ..api.sse import sse_tgi, stream_error
from .serving import GenerationRequest, final_output, make_params, off_loop, submit

router = APIRouter()


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int | None = Field(default=None, ge=1)  # None: until EOS or the context is full
    do_sample: bool | None = None
    temperature: float | None = Field(default=None, gt=0)
    top_k: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    details: bool = False
    return_full_text: bool | None = False
    top_n_tokens: int | None = Field(default=None, ge=0, le=20)
    decoder_input_details: bool | None = False
    # TGI parameters we do not support yet: refused when set
    best_of: int | None = None
    grammar: dict[str, Any] | None = None  # {"type": "json" | "json_schema" | "regex", "value": ...}
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool | None = False
    adapter_id: str | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: str = Field(min_length=1)
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


async def _prepare(state, body: GenerateRequest):
    p = body.parameters
    for name in ("truncate", "typical_p", "adapter_id"):
        if getattr(p, name) is not None:
            raise APIError(400, f"`{name}` is not supported by this server yet")
    if p.watermark or p.decoder_input_details:
        raise APIError(400, "`watermark` and `decoder_input_details` are not supported by this server yet")
    if p.best_of not in (None, 1):
        raise APIError(400, "`best_of` is not supported by this server yet")
    engine = state.get_engine()
    # TGI samples when asked to, or when any sampling parameter is given; else greedy
    sample = bool(p.do_sample) or p.top_k is not None or p.top_p is not None or \
        (p.temperature is not None and p.temperature != 1.0)
    grammar = await structured.processors(engine, structured.tgi_spec(p.grammar))
    params = make_params(logits_processors=grammar,
                         max_tokens=p.max_new_tokens, temperature=(p.temperature or 1.0) if sample else 0.0,
                         top_k=p.top_k, top_p=p.top_p, repetition_penalty=p.repetition_penalty,
                         frequency_penalty=p.frequency_penalty, seed=p.seed, stop=p.stop,
                         logprobs=p.top_n_tokens or 0)
    return engine, await off_loop(engine.tokenizer.encode, body.inputs), params


def _finish_reason(c) -> str:
    if c.finish_reason == "length":
        return "length"
    return "eos_token" if c.stop_reason is None else "stop_sequence"


def _token(tok, tid: int, lp: float, text: str | None = None) -> dict:
    special = tid in tok.eos_ids or tid == tok.bos_id
    return {"id": tid, "text": tok.decode([tid], skip_special_tokens=False) if text is None else text,
            "logprob": lp, "special": special}


def _top(tok, top: dict) -> list[dict]:
    return [_token(tok, i, v) for i, v in top.items()]


async def _start(body: GenerateRequest, request: Request):
    """(tokenizer, parameters, engine output stream, text to put before the answer)"""
    state = await use_model(request, None, required=False)  # TGI names no model: the default one
    engine, ids, params = await _prepare(state, body)
    p = body.parameters
    stream = await submit(state, request, GenerationRequest(ids, params, body.stream))
    return engine.tokenizer, p, stream, body.inputs if p.return_full_text else ""


async def _generate(body: GenerateRequest, request: Request):
    tok, p, stream, prefix = await _start(body, request)
    final = await final_output(request, stream)
    c = final.outputs[0]
    result = {"generated_text": prefix + c.text}
    if p.details:
        result["details"] = {
            "finish_reason": _finish_reason(c), "generated_tokens": len(c.token_ids), "seed": p.seed,
            "prefill": [], "tokens": [_token(tok, t, lp) for t, (lp, _) in zip(c.token_ids, c.logprobs)],
            "top_tokens": [_top(tok, top) for _, top in c.logprobs] if p.top_n_tokens else None,
            "best_of_sequences": None}
    return JSONResponse(result)


async def stream_events(tok, p, stream, prefix: str):
    """The SSE events of a TGI stream: one per generated token; p: the request's parameters."""
    try:
        async for out in stream:
            c = out.outputs[0]
            new = c.token_ids_delta or ([c.token_ids[-1]] if out.finished and c.token_ids else [])
            if not new:
                continue
            # one event per token, as TGI sends them, even when an output brings several (a
            # speculative step, or a reader slower than the engine: engine/mailbox.py)
            first = len(c.token_ids) - len(new)
            rest = c.text_delta
            for k, tid in enumerate(new):
                last = k == len(new) - 1
                piece = tok.decode([tid], skip_special_tokens=False)
                text = rest if last else (piece if rest.startswith(piece) else "")
                rest = rest[len(text):]
                lp, top = c.logprobs[first + k] if c.logprobs else (0.0, {})
                event = {"index": first + k + 1, "token": _token(tok, tid, lp, text),
                         "top_tokens": _top(tok, top) if p.top_n_tokens else None,
                         "generated_text": None, "details": None}
                if out.finished and last:
                    event["generated_text"] = prefix + c.text
                    event["details"] = {"finish_reason": _finish_reason(c),
                                        "generated_tokens": len(c.token_ids), "seed": p.seed}
                yield sse_tgi(event)
    except APIError as e:
        yield stream_error("/generate_stream", e.status, e.message)


async def _generate_stream(body: GenerateRequest, request: Request):
    tok, p, stream, prefix = await _start(body, request)
    return StreamingResponse(stream_events(tok, p, stream, prefix), media_type="text/event-stream")


@router.post("/generate")
async def generate_route(body: GenerateRequest, request: Request):
    return await _generate(body, request)


@router.post("/generate_stream")
async def generate_stream_route(body: GenerateRequest, request: Request):
    return await _generate_stream(body, request)


@router.post("/")
async def compat(body: GenerateRequest, request: Request):
    return await (_generate_stream if body.stream else _generate)(body, request)


@router.get("/info")
async def info(request: Request):
    state = await use_model(request, None, required=False)
    engine = state.get_engine()
    return {"model_id": state.model_name, "model_sha": None, "model_dtype": str(engine.dtype).removeprefix("torch."),
            "model_device_type": engine.device_type, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": state.settings.max_queue or 0, "max_best_of": 1,
            "max_stop_sequences": 16, "max_input_tokens": engine.max_model_len - 1,
            "max_total_tokens": engine.max_model_len, "validation_workers": 1, "max_client_batch_size": 1,
            "router": "tokenmill", "version": __version__, "sha": None, "docker_label": None}
