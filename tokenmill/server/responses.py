"""OpenAI Responses API: POST /v1/responses (streaming or not), GET / DELETE /v1/responses/{id},
GET /v1/responses/{id}/input_items.

An answer is a list of output items: a reasoning item (thinking models), then a message with
output_text, or function_call items. A stream is named events, each with a sequence_number:
response.created, response.in_progress, then per item output_item.added, its parts and deltas
(reasoning_text, output_text, function_call_arguments) and output_item.done, then
response.completed (or .incomplete when max_output_tokens cut it, .failed on an engine error).
Stored responses (store: true, the default) live in a ResponseStore, one owner per API key.
"""
from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .model_pool import use_model
from ..api.errors import APIError
from ..api.sse import sse_count, sse_event
from .chat_core import ChatCall, start_chat
from .reasoning import CLOSE
from .response_store import ResponseStore
from .responses_protocol import ResponsesRequest, input_messages, output_messages
from .serving import final_output, make_params, off_loop

router = APIRouter()


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _store(state) -> ResponseStore:
    if getattr(state, "responses", None) is None:
        state.responses = ResponseStore(state.settings.responses_store)
    return state.responses


def _owner(request: Request) -> str:
    """Stored responses belong to the API key's tenant (and the router's tenant, behind one)."""
    tenant = getattr(request.state, "tenant", "anonymous")
    salt = request.headers.get("x-tokenmill-cache-salt")
    return f"{tenant}/{salt}" if salt else tenant


def _message_item(text: str, status: str = "completed", item_id: str | None = None) -> dict:
    return {"type": "message", "id": item_id or _id("msg"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _reasoning_item(text: str, item_id: str | None = None) -> dict:
    return {"type": "reasoning", "id": item_id or _id("rs"), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def _call_item(call: dict, status: str = "completed", item_id: str | None = None) -> dict:
    fn = call["function"]
    return {"type": "function_call", "id": item_id or _id("fc"), "call_id": call["id"], "name": fn["name"],
            "arguments": fn["arguments"], "status": status}


class _Answer:
    """The response object of one request, as it is built and when it is done."""

    def __init__(self, body: ResponsesRequest, rid: str, prompt_tokens: int):
        self.body, self.rid, self.prompt_tokens = body, rid, prompt_tokens
        self.created = int(time.time())

    def response(self, status: str, output: list[dict], c=None, cached: int = 0, reasoning_tokens: int = 0,
                 error: dict | None = None) -> dict:
        b = self.body
        out_tokens = len(c.token_ids) if c is not None else 0
        usage = None if c is None else {
            "input_tokens": self.prompt_tokens, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": self.prompt_tokens + out_tokens}
        return {"id": self.rid, "object": "response", "created_at": self.created, "status": status,
                "error": error, "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": b.instructions, "max_output_tokens": b.max_output_tokens, "model": b.model,
                "output": output, "parallel_tool_calls": b.parallel_tool_calls is not False,
                "previous_response_id": b.previous_response_id, "reasoning": b.reasoning or {"effort": None, "summary": None},
                "store": b.store, "temperature": b.temperature if b.temperature is not None else 1.0,
                "text": b.text or {"format": {"type": "text"}}, "tool_choice": b.tool_choice or "auto",
                "tools": b.tools or [], "top_p": b.top_p if b.top_p is not None else 1.0, "truncation": "disabled",
                "usage": usage, "user": b.user, "metadata": b.metadata or {}}


def _reasoning_tokens(tok, c, reasoning: str) -> int:
    if not reasoning:
        return 0
    close = tok.encode(CLOSE, add_special_tokens=False)
    if len(close) == 1 and close[0] in c.token_ids:
        return c.token_ids.index(close[0]) + 1
    return len(c.token_ids)


@router.post("/v1/responses")
async def create(body: ResponsesRequest, request: Request):
    state = await use_model(request, body.model)
    body.refuse_unsupported()
    store, owner = _store(state), _owner(request)
    history: list[dict] = []
    if body.previous_response_id:
        history = await off_loop(store.conversation, owner, body.previous_response_id)
        if history is None:
            raise APIError(404, f"Previous response with id '{body.previous_response_id}' not found.",
                           param="previous_response_id")
    new_messages, items = input_messages(body.input)
    for item in items:
        item.setdefault("id", _id("msg" if item.get("type", "message") == "message" else "item"))
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    tools, choice = body.chat_tools()
    call = ChatCall(system + history + new_messages, tools, choice, body.parallel_tool_calls is not False,
                    body.grammar_spec(), body.enable_thinking(), fit_max_tokens=True)
    pick = state.pick

    def params(grammar):
        return make_params(logits_processors=list(grammar), max_tokens=body.max_output_tokens,
                           temperature=pick("temperature", body.temperature, 1.0), top_p=pick("top_p", body.top_p),
                           top_k=pick("top_k", None), min_p=pick("min_p", None))
    rid = _id("resp")
    run = await start_chat(state, request, call, params, body.stream, rid)
    answer = _Answer(body, rid, len(run.prompt_ids))
    tok = state.engine.tokenizer

    def finish(output: list[dict], c, cached: int, reasoning: str) -> dict:
        status = "incomplete" if c.finish_reason == "length" else "completed"
        response = answer.response(status, output, c, cached, _reasoning_tokens(tok, c, reasoning))
        if body.store:
            store.put(owner, response, items, history + new_messages + output_messages(output))
        return response

    if body.stream:
        counting = request.headers.get("x-tokenmill-usage") == "continuous"
        return StreamingResponse(_events(run, answer, finish, counting), media_type="text/event-stream")
    final = await final_output(request, run.stream)

    def build() -> dict:
        c = final.outputs[0]
        reasoning, text = run.split(c.text)
        calls = run.calls_of(text)
        output = [_reasoning_item(reasoning)] if reasoning else []
        output += [_call_item(x) for x in calls] if calls else [_message_item(text)]
        return finish(output, c, final.num_cached_tokens, reasoning)
    return JSONResponse(await off_loop(build))


async def _events(run, answer: _Answer, finish, counting: bool = False):
    seq = iter(range(1 << 62))
    output: list[dict] = []
    cur: dict = {}  # the item being streamed: {"item", "index", "text"}

    def ev(kind: str, **fields) -> str:
        return sse_event({"type": kind, "sequence_number": next(seq), **fields})

    def open_item(item: dict) -> str:
        cur.clear()
        cur.update(item=item, index=len(output), text="")
        output.append(item)
        return ev("response.output_item.added", output_index=cur["index"], item=item)

    def close_item() -> list[str]:
        if not cur:
            return []
        item, i, text = cur["item"], cur["index"], cur["text"]
        events = []
        if item["type"] == "reasoning":
            item["content"] = [{"type": "reasoning_text", "text": text}]
            events.append(ev("response.reasoning_text.done", item_id=item["id"], output_index=i, content_index=0, text=text))
        elif item["type"] == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item.update(status="completed", content=[part])
            events += [ev("response.output_text.done", item_id=item["id"], output_index=i, content_index=0,
                          text=text, logprobs=[]),
                       ev("response.content_part.done", item_id=item["id"], output_index=i, content_index=0, part=part)]
        else:
            item.update(status="completed", arguments=text)
            events.append(ev("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                             name=item["name"], arguments=text))
        events.append(ev("response.output_item.done", output_index=i, item=item))
        cur.clear()
        return events

    def add(kind: str, delta: str) -> str:
        cur["text"] += delta
        item_id, i = cur["item"]["id"], cur["index"]
        if kind == "reasoning":
            return ev("response.reasoning_text.delta", item_id=item_id, output_index=i, content_index=0, delta=delta)
        if kind == "message":
            return ev("response.output_text.delta", item_id=item_id, output_index=i, content_index=0, delta=delta,
                      logprobs=[])
        return ev("response.function_call_arguments.delta", item_id=item_id, output_index=i, delta=delta)

    def kind() -> str | None:
        return cur["item"]["type"] if cur else None

    yield ev("response.created", response=answer.response("in_progress", []))
    yield ev("response.in_progress", response=answer.response("in_progress", []))
    out = None
    try:
        async for out in run.outputs():
            c = out.outputs[0]
            if getattr(c, "reasoning_delta", ""):
                if kind() != "reasoning":
                    for e in close_item():
                        yield e
                    yield open_item({"type": "reasoning", "id": _id("rs"), "summary": [], "content": []})
                yield add("reasoning", c.reasoning_delta)
            for d in getattr(c, "tool_deltas", None) or []:  # a required call, as it is generated
                if "id" in d:
                    for e in close_item():
                        yield e
                    yield open_item(_call_item({"id": d["id"], "function": {"name": d["function"]["name"], "arguments": ""}},
                                               "in_progress"))
                elif d["function"]["arguments"]:
                    yield add("function_call", d["function"]["arguments"])
            for x in getattr(c, "tool_calls", None) or []:  # an auto-mode call, once finished
                for e in close_item():
                    yield e
                yield open_item(_call_item({**x, "function": {**x["function"], "arguments": ""}}, "in_progress"))
                yield add("function_call", x["function"]["arguments"])
            if c.text_delta and not getattr(c, "tool_calls", None):
                if kind() != "message":
                    for e in close_item():
                        yield e
                    item = _message_item("", "in_progress")
                    item["content"] = []
                    yield open_item(item)
                    yield ev("response.content_part.added", item_id=item["id"], output_index=cur["index"],
                             content_index=0, part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
                yield add("message", c.text_delta)
            if counting:
                yield sse_count(len(c.token_ids))
        c = out.outputs[0]
        if not output:  # an empty answer is still a message
            item = _message_item("", "in_progress")
            item["content"] = []
            yield open_item(item)
            yield ev("response.content_part.added", item_id=item["id"], output_index=0, content_index=0,
                     part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        for e in close_item():
            yield e
        reasoning = "".join(x["content"][0]["text"] for x in output if x["type"] == "reasoning")
        response = await off_loop(finish, output, c, out.num_cached_tokens, reasoning)
        yield ev(f"response.{response['status']}", response=response)
    except APIError as e:  # the engine failed mid-answer
        yield ev("response.failed", response=answer.response("failed", output, error={
            "code": "server_error", "message": e.message}))


async def _stored(request: Request, what: str, rid: str):
    """The owner's stored response (get), its input items or its deletion; 404 for anything
    another owner has, as for anything that does not exist."""
    found = await off_loop(getattr(_store(request.app.state.tm), what), _owner(request), rid)
    if found is None or found is False:
        raise APIError(404, f"Response with id '{rid}' not found.", param="response_id")
    return found


@router.get("/v1/responses/{rid}")
async def retrieve(rid: str, request: Request):
    return await _stored(request, "get", rid)


@router.get("/v1/responses/{rid}/input_items")
async def input_items(rid: str, request: Request):
    items = await _stored(request, "input_items", rid)
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": False}


@router.delete("/v1/responses/{rid}")
async def delete(rid: str, request: Request):
    await _stored(request, "delete", rid)
    return {"id": rid, "object": "response", "deleted": True}
