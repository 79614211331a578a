"""POST /tokenmill/explain: how a prompt becomes tokens, and each generated token a choice.

The prompt comes back as the model saw it (after the chat template) with every token's id,
text and whether it is special. Each generated step comes back with its top candidates and
their probability at every stage of the sampler: raw (softmax of the logits), after
penalties, after temperature, and after top-k / top-p / min-p (the distribution the token is
drawn from), the sampled token marked.

Replaying one step with other settings: send `prompt_token_ids` (the prompt ids from a
previous answer), `output_token_ids` (the tokens generated before that step) and
`max_tokens: 1`; the step is recomputed from the model's logits with the new settings, and
the token is drawn as the engine would draw it at that position (the same seed stream).
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .model_pool import use_model
from ..engine import explain as ex
from ..api.errors import APIError
from .protocol import ChatMessage
from .dashboard import kernel_status
from .serving import GenerationRequest, chat_prompt_ids, final_output, make_params, off_loop, submit

router = APIRouter()

MAX_STEPS = 256
# each step keeps its raw logits row (vocabulary x 4 bytes) until the answer is built: a
# request may hold at most this much, and two explain requests run at once (others get 429)
MAX_LOGITS_BYTES = 32 * 2**20
MAX_RUNNING = 2


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    output_token_ids: list[int] = Field(default_factory=list)
    max_tokens: int = Field(16, ge=1, le=MAX_STEPS)
    temperature: float = Field(1.0, ge=0)
    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    top_n: int = Field(10, ge=1, le=100)   # candidates listed per step


def _prompt_ids(engine, body: ExplainRequest) -> list[int]:
    given = [x is not None for x in (body.messages, body.prompt, body.prompt_token_ids)]
    if sum(given) != 1:
        raise APIError(400, "give exactly one of messages, prompt or prompt_token_ids")
    if body.messages is not None:
        if not body.messages:
            raise APIError(400, "messages must not be empty", param="messages")
        return chat_prompt_ids(engine, [m.model_dump(exclude_none=True) for m in body.messages])
    if body.prompt is not None:
        return engine.tokenizer.encode(body.prompt)
    vocab = engine.tokenizer.vocab_size
    bad = [i for i in body.prompt_token_ids + body.output_token_ids if not 0 <= i < vocab]
    if bad or not body.prompt_token_ids:
        raise APIError(400, f"token ids must be in [0, {vocab}) and the prompt non-empty", param="prompt_token_ids")
    return list(body.prompt_token_ids)


def _describe(tok, ids: list[int]) -> list[dict]:
    special = tok.special_ids
    return [{"id": i, "text": tok.piece(i), "special": i in special} for i in ids]


@router.post("/tokenmill/explain")
async def explain(body: ExplainRequest, request: Request):
    state = await use_model(request, body.model, required=False)
    engine = state.get_engine()
    prompt_ids = await off_loop(_prompt_ids, engine, body)
    replay = bool(body.output_token_ids)
    row = engine.model_config.vocab_size * 4
    if body.max_tokens * row > MAX_LOGITS_BYTES:
        raise APIError(400, f"max_tokens may be at most {MAX_LOGITS_BYTES // row} for this model's vocabulary "
                            f"(each step keeps a row of {engine.model_config.vocab_size} logits)", param="max_tokens")
    if state.explaining >= MAX_RUNNING:
        raise APIError(429, f"{MAX_RUNNING} explain requests are running; retry later", headers={"Retry-After": "1"})
    state.explaining += 1
    try:
        return await _explain(body, request, state, engine, prompt_ids, replay)
    finally:
        state.explaining -= 1


async def _explain(body, request, state, engine, prompt_ids, replay):
    if replay and body.max_tokens != 1:
        raise APIError(400, "output_token_ids replays one step: set max_tokens to 1", param="max_tokens")
    params = make_params(max_tokens=body.max_tokens, temperature=body.temperature, top_k=body.top_k,
                         top_p=body.top_p, min_p=body.min_p, repetition_penalty=body.repetition_penalty,
                         frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty,
                         seed=body.seed, return_raw_logits=True, skip_special_tokens=False)
    out = await final_output(request, await submit(
        state, request, GenerationRequest(prompt_ids + body.output_token_ids, params)))
    completion = out.outputs[0]
    tok = engine.tokenizer

    def steps() -> list[dict]:
        rows = []
        for k, (token, raw) in enumerate(zip(completion.token_ids, completion.raw_logits or [])):
            before = list(body.output_token_ids) + completion.token_ids[:k]
            st = ex.stages(raw, params, prompt_ids, before, tok.eos_ids)
            chosen = ex.pick(st, params, len(before)) if replay else token
            cands = ex.candidates(st, body.top_n, chosen)
            for c in cands:
                c["text"] = tok.piece(c["id"])
            rows.append({"index": len(before), "token": {"id": chosen, "text": tok.piece(chosen)},
                         "kept": ex.kept(st), "candidates": cands})
        return rows

    computed = await asyncio.to_thread(steps)
    return {
        "model": state.model_name,
        "prompt": {"text": tok.decode(prompt_ids, skip_special_tokens=False),
                   "tokens": _describe(tok, prompt_ids)},
        "output_token_ids": list(body.output_token_ids),
        "steps": computed,
        "text": "".join(s["token"]["text"] for s in computed) if replay else completion.text,
        "finish_reason": completion.finish_reason,
        "params": {k: getattr(params, k) for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                                                   "frequency_penalty", "presence_penalty", "seed")},
        "max_model_len": engine.max_model_len,
    }


@router.get("/tokenmill/info")
async def info(request: Request, model: str | None = None):
    """What a page needs to know about this server: the model (the default one, or `model` once
    it is loaded), its context, prices, and the store's models for the chat page's picker."""
    state = request.app.state.tm
    slot = state.pool.slots.get(model or state.default_model) or state.default_slot
    engine = slot.engine if slot is not None else None
    sampling = (slot.sampling, slot.sampling_source) if slot is not None else ({}, "")
    return {"model": slot.name if slot is not None else state.default_model, "models": state.pool.names(),
            "loaded": [s.name for s in state.pool.loaded()],
            "max_model_len": getattr(engine, "max_model_len", None),
            "ready": engine is not None, "price": {"in": state.settings.price_in, "out": state.settings.price_out},
            "weights": getattr(engine, "weights", None), "kernels": kernel_status(),
            # what the chat page starts from; the API routes use it only with --generation-config auto
            "sampling": {"params": sampling[0], "source": sampling[1],
                         "api_routes": state.settings.generation_config == "auto"}}

