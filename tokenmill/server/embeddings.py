"""Embeddings: OpenAI POST /v1/embeddings, Ollama POST /api/embed and the older /api/embeddings.

Each input is one engine request with SamplingParams.pooling: prefill only, batched with
whatever else runs, its final hidden states pooled as the model's files say
(model/loader/pooling.py). OpenAI and /api/embed vectors are L2-normalized (as those servers
return them); /api/embeddings returns the raw pooled vector, as Ollama's does. `dimensions`
keeps the first N values and normalizes again (the Matryoshka convention OpenAI uses).
"""
from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .model_pool import use_model
from ..api.errors import APIError
from .disconnect import until_disconnect
from .serving import GenerationRequest, make_params, off_loop, submit

router = APIRouter()
MAX_INPUTS = 2048  # as OpenAI's limit


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class OllamaEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    input: str | list[str] = ""
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: Any = None


class OllamaLegacyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: Any = None


def normalized(vec: list[float], dims: int | None = None) -> list[float]:
    v = vec[:dims] if dims else vec
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


async def embed(state, request: Request, prompts: list[list[int]], dims: int | None = None,
                normalize: bool = True) -> list[list[float]]:
    """One vector per prompt, every prompt in the engine at once."""
    engine = state.get_engine()
    if not prompts:
        raise APIError(400, "input must not be empty", param="input")
    if len(prompts) > MAX_INPUTS:
        raise APIError(400, f"input may hold at most {MAX_INPUTS} items", param="input")
    hidden = engine.model_config.hidden_size
    if dims is not None and dims > hidden:
        raise APIError(400, f"dimensions must be at most {hidden} for this model", param="dimensions")
    vocab = engine.model_config.vocab_size
    for ids in prompts:
        if not ids:
            raise APIError(400, "an input has no tokens", param="input")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is out of range (vocabulary size {vocab})", param="input")
    params = make_params(max_tokens=1, pooling=state.pooling)

    async def run():  # all admitted at once, so that the engine batches them
        results = await asyncio.gather(*(submit(state, request, GenerationRequest(ids, params), watch=False)
                                         for ids in prompts), return_exceptions=True)
        streams = [r for r in results if not isinstance(r, BaseException)]
        try:
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            finals = []
            for s in streams:  # (the first output of a pooling request is its last)
                async for out in s:
                    pass
                finals.append(out)
            return finals
        finally:
            for s in streams:
                await s.aclose()
    finals = await until_disconnect(request, run())
    vecs = [f.outputs[0].embedding for f in finals]
    if any(v is None for v in vecs):
        raise APIError(503, "an embedding request ended without its vector")
    if not normalize:
        return [v[:dims] if dims else v for v in vecs]
    return await off_loop(lambda: [normalized(v, dims) for v in vecs])


async def _tokenize(engine, texts: list[str]) -> list[list[int]]:
    return await off_loop(lambda: [engine.tokenizer.encode(t) for t in texts])


@router.post("/v1/embeddings")
async def openai_embeddings(body: EmbeddingRequest, request: Request):
    state = await use_model(request, body.model)
    engine = state.get_engine()
    x = body.input
    if isinstance(x, str):
        prompts = await _tokenize(engine, [x])
    elif x and all(isinstance(t, int) for t in x):
        prompts = [list(x)]
    elif all(isinstance(t, str) for t in x):
        prompts = await _tokenize(engine, list(x))
    else:
        prompts = [list(t) for t in x]
    vecs = await embed(state, request, prompts, body.dimensions)

    def encode(v):
        if body.encoding_format == "base64":  # little-endian float32, as OpenAI sends it
            return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        return v
    n = sum(len(p) for p in prompts)
    return {"object": "list", "model": body.model, "usage": {"prompt_tokens": n, "total_tokens": n},
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vecs)]}


@router.post("/api/embed")
async def ollama_embed(body: OllamaEmbedRequest, request: Request):
    state = await use_model(request, body.model)
    engine = state.get_engine()
    started = time.perf_counter_ns()
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts or texts == [""]:  # Ollama: an empty input loads the model and embeds nothing
        return {"model": body.model, "embeddings": [], "total_duration": 0, "load_duration": 0,
                "prompt_eval_count": 0}
    prompts = await _tokenize(engine, texts)
    limit = engine.max_model_len - 1
    if body.truncate:
        prompts = [p[:limit] for p in prompts]
    elif any(len(p) > limit for p in prompts):
        raise APIError(400, "the input length exceeds the context length")
    vecs = await embed(state, request, prompts, body.dimensions)
    return {"model": body.model, "embeddings": vecs, "total_duration": time.perf_counter_ns() - started,
            "load_duration": 0, "prompt_eval_count": sum(len(p) for p in prompts)}


@router.post("/api/embeddings")
async def ollama_embeddings(body: OllamaLegacyRequest, request: Request):
    state = await use_model(request, body.model)
    if not body.prompt:
        return {"embedding": []}
    prompts = await _tokenize(state.get_engine(), [body.prompt])
    return {"embedding": (await embed(state, request, prompts, normalize=False))[0]}
