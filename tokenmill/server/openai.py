"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models,
/tokenize, /detokenize. Streams are server-sent events ending in `data: [DONE]`."""
from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from .model_pool import use_model
from ..engine.outputs import CompletionOutput
from ..engine.sampler import LOGPROB_FLOOR
from . import structured
from .chat_core import ChatCall, start_chat
from ..api.errors import APIError
from ..api.sse import SSE_DONE, sse, stream_error
from .protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from .serving import (GenerationRequest, chat_prompt_ids, final_output, make_params, new_id, off_loop, submit,
                      until_disconnect)

router = APIRouter()


def _state(request: Request):
    return request.app.state.tm


def _usage_modes(body, request: Request) -> tuple[bool, bool]:
    """(include_usage, continuous): a last chunk with the usage; the usage so far in every
    chunk (vLLM's continuous_usage_stats; the router asks for it with a header, so that a
    client that hangs up is billed the tokens it was sent)."""
    so = body.stream_options
    continuous = bool(so and so.continuous_usage_stats) or request.headers.get("x-tokenmill-usage") == "continuous"
    return bool(so and so.include_usage), continuous


def _messages(messages) -> list[dict]:
    out = []
    for m in messages:
        msg = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            calls = []
            for c in m.tool_calls:
                fn = c.get("function") or {}
                args = fn.get("arguments")
                try:
                    args = json.loads(args) if isinstance(args, str) else (args or {})
                except ValueError as e:
                    raise APIError(400, f"tool call arguments are not JSON: {e}", param="messages") from e
                calls.append({"name": fn.get("name"), "arguments": args})
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def _lp(x: float) -> float:
    return max(x, LOGPROB_FLOOR)


def _logit_bias(raw: dict[str, float] | None) -> dict[int, float] | None:
    if not raw:
        return None
    try:
        return {int(k): v for k, v in raw.items()}
    except ValueError as e:
        raise APIError(400, "logit_bias keys must be token ids", param="logit_bias") from e


def _common_params(state, body, max_tokens, logprobs, processors=(), prompt_logprobs=None):
    # OpenAI's documented defaults (temperature 1, top_p 1), unless the operator asked for the
    # model's recommended sampling (state.pick)
    pick = state.pick
    return make_params(logits_processors=list(processors), prompt_logprobs=prompt_logprobs,
        n=body.n, temperature=pick("temperature", body.temperature, 1.0), top_p=pick("top_p", body.top_p),
        top_k=pick("top_k", body.top_k), min_p=pick("min_p", body.min_p), max_tokens=max_tokens,
        min_tokens=body.min_tokens, stop=body.stop, seed=body.seed, frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty, repetition_penalty=pick("repetition_penalty", body.repetition_penalty),
        logit_bias=_logit_bias(body.logit_bias), ignore_eos=body.ignore_eos,
        stop_token_ids=body.stop_token_ids, skip_special_tokens=body.skip_special_tokens,
        logprobs=logprobs, speculative=body.speculative)


def _token_text(tok, token_id: int) -> str:
    return tok.decode([token_id], skip_special_tokens=False)


def _chat_logprobs(tok, token_ids, logprobs) -> dict:
    content = []
    for tid, (lp, top) in zip(token_ids, logprobs):
        t = _token_text(tok, tid)
        content.append({"token": t, "logprob": _lp(lp), "bytes": list(t.encode()),
                        "top_logprobs": [{"token": (tt := _token_text(tok, i)), "logprob": _lp(v),
                                          "bytes": list(tt.encode())} for i, v in top.items()]})
    return {"content": content}


def _completion_logprobs(tok, token_ids, logprobs, offset0: int = 0) -> dict:
    """logprobs: per token (logprob, top) or None (an echoed first prompt token has none)."""
    tokens = [_token_text(tok, t) for t in token_ids]
    offsets, pos = [], offset0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": [None if x is None else _lp(x[0]) for x in logprobs],
            "top_logprobs": [None if x is None else {_token_text(tok, i): _lp(v) for i, v in x[1].items()}
                             for x in logprobs],
            "text_offset": offsets}


def _vllm_prompt_logprobs(tok, prompt_ids, prompt_logprobs) -> list | None:
    """vLLM's shape: per prompt token None (the first) or {token id: {logprob, rank, decoded_token}},
    the prompt's own token first, then the top ones."""
    if prompt_logprobs is None:
        return None
    out = []
    for tid, x in zip(prompt_ids, prompt_logprobs):
        if x is None:
            out.append(None)
            continue
        value, top = x
        entry = {str(tid): {"logprob": _lp(value), "rank": None, "decoded_token": _token_text(tok, tid)}}
        for rank, (i, v) in enumerate(top.items(), start=1):
            entry.setdefault(str(i), {"logprob": _lp(v), "rank": rank, "decoded_token": _token_text(tok, i)})
            if str(i) == str(tid):
                entry[str(i)]["rank"] = rank
        out.append(entry)
    return out


def _usage(num_prompt: int, num_completion: int) -> dict:
    return {"prompt_tokens": num_prompt, "completion_tokens": num_completion,
            "total_tokens": num_prompt + num_completion}


async def _merge(streams):
    """Interleave several async iterators: yields (stream index, item)."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i, s):
        try:
            async for item in s:
                await queue.put((i, item))
        except BaseException as e:
            await queue.put((i, e))
        finally:
            await queue.put((i, done))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(streams)
    try:
        while remaining:
            i, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        # a pump must have left its stream before the stream can be closed
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in streams:
            await s.aclose()


# ---- chat ------------------------------------------------------------------------------
@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = await use_model(request, body.model)
    body.check_unsupported()
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    if body.continue_final_message and body.add_generation_prompt:
        body.add_generation_prompt = False  # as vLLM: continuing implies no new turn
    call = ChatCall(_messages(body.messages), body.tools, body.tool_choice, body.parallel_tool_calls is not False,
                    structured.openai_spec(body), dict(body.chat_template_kwargs or {}),
                    body.continue_final_message, body.add_generation_prompt)
    # no max_tokens: until EOS or the context is full, as OpenAI's chat API does
    rid, created, model = new_id("chatcmpl"), int(time.time()), body.model
    run = await start_chat(state, request, call, lambda grammar: _common_params(
        state, body, body.max_completion_tokens or body.max_tokens,
        (body.top_logprobs or 0) if body.logprobs else None, grammar, body.prompt_logprobs),
        body.stream, rid, body.cache_salt)
    tok, params, prompt_ids = state.engine.tokenizer, run.params, run.prompt_ids
    if body.stream:
        include_usage, continuous = _usage_modes(body, request)
        return StreamingResponse(_chat_stream(run.outputs(), rid, created, model, tok, params, len(prompt_ids),
                                              include_usage, continuous), media_type="text/event-stream")

    final = await final_output(request, run.stream)

    def answer() -> bytes:  # off the loop: tool-call checks, n x top_logprobs decoded
        choices = []
        for c in final.outputs:
            reasoning, text = run.split(c.text)
            message, finish = {"role": "assistant", "content": text}, c.finish_reason
            calls = run.calls_of(text)
            if calls:
                message, finish = {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
            if run.reasoning:
                message["reasoning_content"] = reasoning or None
            choices.append({"index": c.index, "message": message,
                            "logprobs": _chat_logprobs(tok, c.token_ids, c.logprobs) if c.logprobs is not None else None,
                            "finish_reason": finish})
        completion = sum(len(c.token_ids) for c in final.outputs)
        response = {"id": rid, "object": "chat.completion", "created": created, "model": model,
                    "choices": choices, "usage": _usage(len(prompt_ids), completion), "system_fingerprint": None}
        if body.prompt_logprobs is not None:
            response["prompt_logprobs"] = _vllm_prompt_logprobs(tok, prompt_ids, final.prompt_logprobs)
        return json.dumps(response).encode()
    return Response(await off_loop(answer), media_type="application/json")


async def _chat_stream(stream, rid, created, model, tok, params, num_prompt, include_usage, continuous=False):
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None}
    if include_usage:
        base["usage"] = None
    started: set[int] = set()
    num_completion = {}
    so_far: dict[int, int] = {}  # tokens generated per choice

    def chunk(index, delta, finish=None, logprobs=None):
        extra = {"usage": _usage(num_prompt, sum(so_far.values()))} if continuous else {}
        return sse({**base, **extra, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                                   "finish_reason": finish}]})

    try:
        async for out in stream:
            for c in out.outputs:
                so_far[c.index] = len(c.token_ids)
                if c.index not in started:
                    started.add(c.index)
                    yield chunk(c.index, {"role": "assistant", "content": ""})
                lp = None
                if c.logprobs is not None and c.token_ids_delta:
                    n = len(c.token_ids_delta)
                    lp = _chat_logprobs(tok, c.token_ids_delta, c.logprobs[-n:])
                calls = getattr(c, "tool_calls", None) or getattr(c, "called", False)
                if getattr(c, "reasoning_delta", ""):
                    yield chunk(c.index, {"reasoning_content": c.reasoning_delta})
                for delta in getattr(c, "tool_deltas", None) or []:
                    yield chunk(c.index, {"tool_calls": [delta]})
                if getattr(c, "tool_calls", None):  # the first delta of a call: index, id, name; then its arguments
                    for j, call in enumerate(c.tool_calls):
                        fn = call["function"]
                        yield chunk(c.index, {"tool_calls": [{"index": j, "id": call["id"], "type": "function",
                                                               "function": {"name": fn["name"], "arguments": ""}}]})
                        yield chunk(c.index, {"tool_calls": [{"index": j, "function": {"arguments": fn["arguments"]}}]})
                elif c.text_delta or lp:
                    yield chunk(c.index, {"content": c.text_delta}, logprobs=lp)
                if c.finish_reason and c.index not in num_completion:
                    num_completion[c.index] = len(c.token_ids)
                    called = calls and c.finish_reason == "stop"  # a call cut by max_tokens stays "length"
                    yield chunk(c.index, {}, finish="tool_calls" if called else c.finish_reason)
        if include_usage:
            yield sse({**base, "choices": [], "usage": _usage(num_prompt, sum(num_completion.values()))})
        yield SSE_DONE
    except APIError as e:  # e.g. the engine died mid-stream: tell the client in-band
        yield stream_error("/v1/completions", e.status, e.message)


# ---- completions -----------------------------------------------------------------------
@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = await use_model(request, body.model)
    body.check_unsupported()
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of other than n is not supported", param="best_of")
    engine = state.get_engine()
    tok = engine.tokenizer
    p = body.prompt
    if isinstance(p, str):
        prompts, texts = [await off_loop(tok.encode, p)], [p]
    elif p and all(isinstance(x, int) for x in p):
        prompts, texts = [list(p)], [None]
    elif p and all(isinstance(x, str) for x in p):
        prompts, texts = await off_loop(lambda: [tok.encode(x) for x in p]), list(p)
    elif p and all(isinstance(x, list) for x in p):
        prompts, texts = [list(x) for x in p], [None] * len(p)
    else:
        raise APIError(400, "prompt must be a non-empty string, list of strings or token ids", param="prompt")
    vocab = engine.model_config.vocab_size
    bad = [t for ids in prompts for t in ids if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"prompt token id {bad[0]} is out of range (vocabulary size {vocab})", param="prompt")
    if body.echo:
        texts = [t if t is not None else tok.decode(ids, skip_special_tokens=False) for t, ids in zip(texts, prompts)]
    # max_tokens 0 with echo (how evaluation harnesses score a text): the prompt's logprobs only;
    # the engine samples one token, which is dropped
    zero = body.max_tokens == 0
    if zero and not body.echo:
        raise APIError(400, "max_tokens 0 needs echo (scoring the prompt)", param="max_tokens")
    prompt_lp = body.prompt_logprobs if body.prompt_logprobs is not None else \
        (body.logprobs if body.echo and body.logprobs is not None else None)
    grammar = await structured.processors(engine, structured.openai_spec(body))
    params = _common_params(state, body, 1 if zero else body.max_tokens, body.logprobs, grammar, prompt_lp)
    rid, created, model = new_id("cmpl"), int(time.time()), body.model
    if len(prompts) * params.n > state.settings.max_n:
        raise APIError(400, f"prompts x n must be at most {state.settings.max_n} on this server", param="n")
    streams = []
    try:
        for ids in prompts:
            streams.append(await submit(state, request, GenerationRequest(ids, params, body.stream,
                                                                          cache_salt=body.cache_salt)))
    except BaseException:
        for s in streams:
            await s.aclose()
        raise
    num_prompt = sum(len(ids) for ids in prompts)
    n = params.n

    def choice(i: int, c: CompletionOutput, text: str, token_ids, logprobs, finish):
        return {"index": i * n + c.index, "text": text, "finish_reason": finish,
                "logprobs": _completion_logprobs(tok, token_ids, logprobs) if logprobs is not None else None}

    def final_choice(i: int, out, c: CompletionOutput) -> dict:
        ids, lps = ([] if zero else c.token_ids), ([] if zero else c.logprobs)
        text = ("" if zero else c.text)
        if body.echo:
            ids, text = prompts[i] + ids, texts[i] + text
            if lps is not None:
                lps = (out.prompt_logprobs or [None] * len(prompts[i])) + lps
        ch = choice(i, c, text, ids, lps if body.logprobs is not None else None, "length" if zero else c.finish_reason)
        if body.prompt_logprobs is not None:
            ch["prompt_logprobs"] = _vllm_prompt_logprobs(tok, prompts[i], out.prompt_logprobs)
        return ch

    if body.stream:
        include_usage, continuous = _usage_modes(body, request)

        async def events():
            base = {"id": rid, "object": "text_completion", "created": created, "model": model}
            done_tokens = {}
            so_far: dict[tuple, int] = {}
            echoed = set()

            def event(ch):
                extra = {"usage": _usage(num_prompt, sum(so_far.values()))} if continuous else {}
                return sse({**base, **extra, "choices": [ch]})
            try:
                async for i, out in _merge(streams):
                    for c in out.outputs:
                        so_far[(i, c.index)] = 0 if zero else len(c.token_ids)
                        if body.echo and (i, c.index) not in echoed:
                            echoed.add((i, c.index))
                            yield event(choice(i, c, texts[i], [], None, None))
                        if zero:
                            if c.finish_reason:
                                done_tokens[(i, c.index)] = 0
                                yield event(choice(i, c, "", [], None, "length"))
                            continue
                        k = len(c.token_ids_delta)
                        lp = c.logprobs[-k:] if c.logprobs is not None and k else ([] if c.logprobs is not None else None)
                        if c.text_delta or c.finish_reason:
                            yield event(choice(i, c, c.text_delta, c.token_ids_delta, lp, c.finish_reason))
                        if c.finish_reason:
                            done_tokens[(i, c.index)] = len(c.token_ids)
                if include_usage:
                    yield sse({**base, "choices": [], "usage": _usage(num_prompt, sum(done_tokens.values()))})
                yield SSE_DONE
            except APIError as e:
                yield stream_error("/v1/completions", e.status, e.message)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def collect():
        finals = {}
        async for i, out in _merge(streams):
            if out.finished:
                finals[i] = out
        return finals

    finals = await until_disconnect(request, collect())

    def answer() -> bytes:  # off the loop: n x logprobs decoded
        choices, completion = [], 0
        for i in range(len(prompts)):
            for c in finals[i].outputs:
                choices.append(final_choice(i, finals[i], c))
                completion += 0 if zero else len(c.token_ids)
        return json.dumps({"id": rid, "object": "text_completion", "created": created, "model": model,
                           "choices": choices, "usage": _usage(num_prompt, completion)}).encode()
    return Response(await off_loop(answer), media_type="application/json")


# ---- models, tokenizer ----------------------------------------------------------------
@router.get("/v1/models")
async def models(request: Request):
    """The store's models (loaded or not); max_model_len where the file says or it is loaded."""
    state = _state(request)
    listed = await off_loop(state.pool.store.list)
    data = []
    for m in listed:
        slot = state.pool.slots.get(m.name)
        engine = slot.engine if slot is not None else None
        data.append({"id": m.name, "object": "model", "created": int(m.modified_at), "owned_by": "tokenmill",
                     "max_model_len": engine.max_model_len if engine is not None else
                     (m.info.get("context_length") or None), "loaded": engine is not None})
    return {"object": "list", "data": data}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    state = await use_model(request, body.model, required=False)
    engine = state.get_engine()
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of prompt or messages", param="prompt")
    if body.messages is not None:
        ids = await off_loop(chat_prompt_ids, engine, _messages(body.messages))
    else:
        ids = await off_loop(lambda: engine.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens))
    return {"count": len(ids), "max_model_len": engine.max_model_len, "tokens": ids}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    state = await use_model(request, body.model, required=False)
    engine = state.get_engine()
    vocab = engine.model_config.vocab_size
    bad = [t for t in body.tokens if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"token id {bad[0]} is out of range (vocabulary size {vocab})", param="tokens")
    return {"prompt": engine.tokenizer.decode(body.tokens, skip_special_tokens=False)}
