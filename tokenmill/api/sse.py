"""How a stream is framed on the wire, in each protocol, and how an error that happens after
the 200 has gone out is told to the client (one line in the stream, in its protocol's shape).

OpenAI: server-sent events `data: {json}` ending in `data: [DONE]`; TGI: `data:{json}`;
Ollama: one JSON object per line; Anthropic: named events `event: TYPE` + `data: {json}`. json.dumps keeps the default ensure_ascii: no U+2028 or
U+0085 in the frame for line splitters to trip on."""
from __future__ import annotations

import json

from .errors import error_body, protocol_of

SSE_DONE = "data: [DONE]\n\n"


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def sse_tgi(obj) -> str:
    return f"data:{json.dumps(obj)}\n\n"


def sse_event(obj: dict) -> str:
    """A named server-sent event, as Anthropic's streams (and OpenAI's Responses) send them:
    the event's name is its `type`."""
    return f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n"


def sse_count(tokens: int) -> str:
    """An SSE comment with the tokens sent so far, for the router (which asks for counts in
    every chunk with x-tokenmill-usage: continuous, and strips these): a named-event stream
    (Anthropic, Responses) has no field of its own for them, and clients ignore comments."""
    return f": tokens {tokens}\n\n"


def ndjson(obj) -> str:
    return json.dumps(obj) + "\n"


def frame(path: str, obj) -> str:
    """obj framed as the stream on `path` frames its events."""
    kind = protocol_of(path)
    if kind == "anthropic" or path.startswith("/v1/responses"):
        return sse_event(obj)
    return ndjson(obj) if kind == "ollama" else sse_tgi(obj) if kind == "tgi" else sse(obj)


def stream_error(path: str, status: int, message: str) -> str:
    """The last line of a stream that failed after it started. OpenAI clients read the error
    object of a 5xx (type server_error) and its HTTP status as `code`."""
    if path.startswith("/v1/responses"):  # the Responses stream's own error event
        return sse_event({"type": "error", "code": str(status), "message": message, "param": None,
                          "sequence_number": 0})
    body = error_body(path, status, message)
    if protocol_of(path) == "openai":
        body["error"]["code"] = status
    return frame(path, body)
