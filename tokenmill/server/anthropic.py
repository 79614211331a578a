"""Anthropic Messages API: POST /v1/messages (streaming or not), POST /v1/messages/count_tokens.

Streams are named server-sent events: message_start, ping, then per content block
content_block_start / content_block_delta (text_delta, thinking_delta, input_json_delta) /
content_block_stop, then message_delta (stop_reason, usage) and message_stop; an error after the
200 is an `error` event. Errors are in Anthropic's shape (api/errors.py), and keys may come as
`x-api-key` (api/auth.py).
"""
from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .model_pool import use_model
from ..api.errors import APIError
from ..api.sse import sse_count, sse_event, stream_error
from .anthropic_protocol import CountTokensRequest, MessagesRequest, tool_use_block
from .chat_core import render, start_chat
from .serving import final_output, make_params, new_id, off_loop

router = APIRouter()


def _stop_reason(c, calls) -> tuple[str, str | None]:
    if calls and c.finish_reason == "stop":
        return "tool_use", None
    if c.finish_reason == "length":
        return "max_tokens", None
    if isinstance(c.stop_reason, str):
        return "stop_sequence", c.stop_reason
    return "end_turn", None


def _usage(prompt: int, output: int, cached: int) -> dict:
    return {"input_tokens": prompt - cached, "output_tokens": output, "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0}


@router.post("/v1/messages")
async def messages(body: MessagesRequest, request: Request):
    state = await use_model(request, body.model)
    call = body.chat_call()
    pick = state.pick

    def params(grammar):
        return make_params(logits_processors=list(grammar), max_tokens=body.max_tokens,
                           temperature=pick("temperature", body.temperature, 1.0), top_p=pick("top_p", body.top_p),
                           top_k=pick("top_k", body.top_k or None), min_p=pick("min_p", None),
                           stop=body.stop_sequences)
    mid = "msg_" + new_id("x")[2:]
    run = await start_chat(state, request, call, params, body.stream, mid)
    head = {"id": mid, "type": "message", "role": "assistant", "model": body.model}
    if body.stream:
        counting = request.headers.get("x-tokenmill-usage") == "continuous"
        return StreamingResponse(_events(run, head, counting), media_type="text/event-stream")
    final = await final_output(request, run.stream)

    def answer() -> dict:
        c = final.outputs[0]
        reasoning, text = run.split(c.text)
        calls = run.calls_of(text)
        content = [{"type": "thinking", "thinking": reasoning, "signature": ""}] if reasoning else []
        if calls:
            content += [tool_use_block(x) for x in calls]
        elif text or not content:
            content.append({"type": "text", "text": text})
        stop, seq = _stop_reason(c, calls)
        return {**head, "content": content, "stop_reason": stop, "stop_sequence": seq,
                "usage": _usage(len(run.prompt_ids), len(c.token_ids), final.num_cached_tokens)}
    return JSONResponse(await off_loop(answer))


async def _events(run, head, counting: bool = False):
    """The stream, one content block at a time: thinking, then text or tool_use blocks."""
    block = {"index": -1, "kind": None}
    out = None

    def open_block(kind: str, start: dict):
        block["index"] += 1
        block["kind"] = kind
        return sse_event({"type": "content_block_start", "index": block["index"], "content_block": start})

    def close_block():
        if block["kind"] is None:
            return ""
        block["kind"] = None
        return sse_event({"type": "content_block_stop", "index": block["index"]})

    def delta(d: dict):
        return sse_event({"type": "content_block_delta", "index": block["index"], "delta": d})

    yield sse_event({"type": "message_start", "message": {**head, "content": [], "stop_reason": None,
                                                          "stop_sequence": None,
                                                          "usage": _usage(len(run.prompt_ids), 0, 0)}})
    yield sse_event({"type": "ping"})
    try:
        calls = []
        async for out in run.outputs():
            c = out.outputs[0]
            if getattr(c, "reasoning_delta", ""):
                if block["kind"] != "thinking":
                    yield close_block()
                    yield open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                yield delta({"type": "thinking_delta", "thinking": c.reasoning_delta})
            for d in getattr(c, "tool_deltas", None) or []:  # a required call, as it is generated
                if "id" in d:
                    yield close_block()
                    calls.append(d)
                    yield open_block("tool_use", {"type": "tool_use", "id": "toolu_" + d["id"].removeprefix("call_"),
                                                  "name": d["function"]["name"], "input": {}})
                elif d["function"]["arguments"]:
                    yield delta({"type": "input_json_delta", "partial_json": d["function"]["arguments"]})
            for x in getattr(c, "tool_calls", None) or []:  # an auto-mode call, once finished
                calls.append(x)
                yield close_block()
                b = tool_use_block(x)
                yield open_block("tool_use", {**b, "input": {}})
                yield delta({"type": "input_json_delta", "partial_json": json.dumps(b["input"])})
            if c.text_delta and not getattr(c, "tool_calls", None):
                if block["kind"] != "text":
                    yield close_block()
                    yield open_block("text", {"type": "text", "text": ""})
                yield delta({"type": "text_delta", "text": c.text_delta})
            if counting:
                yield sse_count(len(c.token_ids))
        c = out.outputs[0]
        if block["index"] < 0:  # an empty answer still has its (empty) text block
            yield open_block("text", {"type": "text", "text": ""})
        yield close_block()
        stop, seq = _stop_reason(c, calls)
        yield sse_event({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": seq},
                         "usage": {"output_tokens": len(c.token_ids),
                                   "cache_read_input_tokens": out.num_cached_tokens}})
        yield sse_event({"type": "message_stop"})
    except APIError as e:  # e.g. the engine died mid-stream: an error event
        yield stream_error("/v1/messages", e.status, e.message)


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request):
    state = await use_model(request, body.model)
    prompt = await render(state, body.chat_call())
    return {"input_tokens": len(prompt.ids)}
