"""What the router reads from the answers it passes on, in each protocol: usage for the ledger
(OpenAI `usage`, Ollama `prompt_eval_count`/`eval_count`, TGI `details.generated_tokens`) and,
for OpenAI streams, the whole answer for the response cache."""
from __future__ import annotations

import json

TGI_PATHS = ("/generate", "/generate_stream", "/")


def protocol_of(path: str) -> str:
    if path.startswith("/api/"):
        return "ollama"
    return "tgi" if path in TGI_PATHS else "openai"


def is_streaming(path: str, body: dict) -> bool:
    kind = protocol_of(path)
    if kind == "ollama":
        return body.get("stream", True) is not False  # Ollama streams unless told not to
    if kind == "tgi":
        return path == "/generate_stream" or (path == "/" and bool(body.get("stream")))
    return bool(body.get("stream"))


def _usage_from(obj: dict, kind: str) -> dict | None:
    if kind == "ollama":
        if "prompt_eval_count" in obj or "eval_count" in obj:
            return {"prompt_tokens": obj.get("prompt_eval_count") or 0,
                    "completion_tokens": obj.get("eval_count") or 0}
        return None
    if kind == "tgi":
        details = obj.get("details") if isinstance(obj, dict) else None
        if isinstance(details, dict) and "generated_tokens" in details:
            return {"prompt_tokens": 0, "completion_tokens": details["generated_tokens"]}
        return None
    return obj.get("usage")


def usage_of(content: bytes, path: str) -> dict | None:
    try:
        obj = json.loads(content)
        if isinstance(obj, list):  # TGI's POST / answers a list
            obj = obj[0] if obj else {}
        return _usage_from(obj, protocol_of(path))
    except (ValueError, AttributeError, TypeError, IndexError):
        return None


class StreamAccumulator:
    """Reads a stream as it passes: usage for the ledger, whether it ended properly, and (for
    OpenAI) the whole answer for the cache. feed() says whether a line goes on to a client
    that did not ask for usage."""

    def __init__(self, path: str):
        self.kind = protocol_of(path)
        self.chat = path.endswith("chat/completions")
        self.texts: dict[int, str] = {}
        self.finish: dict[int, str] = {}
        self.usage = None
        self.done = False
        self.cacheable = True
        self.meta: dict = {}

    def feed(self, line: str) -> bool:
        if self.kind != "openai":
            self._feed_other(line)
            return True
        if not line.startswith("data:"):
            return True
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return True
        try:
            event = json.loads(data)
        except ValueError:
            return True
        if "error" in event:
            self.cacheable = False
            return True
        self.meta = {k: event.get(k) for k in ("id", "created")}
        if event.get("usage"):
            self.usage = event["usage"]
        for ch in event.get("choices") or []:
            i = ch.get("index", 0)
            piece = (ch.get("delta") or {}).get("content") if self.chat else ch.get("text")
            self.texts[i] = self.texts.get(i, "") + (piece or "")
            if ch.get("finish_reason"):
                self.finish[i] = ch["finish_reason"]
            if ch.get("logprobs"):
                self.cacheable = False  # logprobs are not rebuilt from a stream
        return bool(event.get("choices"))  # a usage-only chunk goes only to those who asked

    def _feed_other(self, line: str) -> None:
        # Ollama: NDJSON, the last line has done: true and the counts; TGI: SSE, the last
        # event has details
        data = line[5:].strip() if line.startswith("data:") else line.strip()
        if not data:
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if "error" in event:
            self.cacheable = False
            return
        usage = _usage_from(event, self.kind)
        if usage is not None:
            self.usage = usage
        if event.get("done") is True or (self.kind == "tgi" and event.get("details")):
            self.done = True

    def as_response(self, model: str) -> bytes:
        idx = sorted(self.texts)
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": self.texts[i]},
                        "logprobs": None, "finish_reason": self.finish.get(i)} for i in idx]
            obj = "chat.completion"
        else:
            choices = [{"index": i, "text": self.texts[i], "logprobs": None,
                        "finish_reason": self.finish.get(i)} for i in idx]
            obj = "text_completion"
        return json.dumps({"id": self.meta.get("id"), "object": obj, "created": self.meta.get("created"),
                           "model": model, "choices": choices, "usage": self.usage}).encode()


async def replay_sse(cached: bytes, path: str, body: dict):
    """A cached answer, streamed as the backend would have: role, content, finish, usage."""
    resp = json.loads(cached)
    chat = path.endswith("chat/completions")
    base = {"id": resp.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": resp.get("created"), "model": resp.get("model")}
    for ch in resp.get("choices", []):
        i = ch["index"]
        if chat:
            for delta, finish in (({"role": "assistant", "content": ""}, None),
                                  ({"content": ch["message"]["content"]}, None), ({}, ch["finish_reason"])):
                yield "data: " + json.dumps({**base, "choices": [{"index": i, "delta": delta, "logprobs": None,
                                                                  "finish_reason": finish}]}) + "\n\n"
        else:
            yield "data: " + json.dumps({**base, "choices": [{"index": i, "text": ch["text"], "logprobs": None,
                                                              "finish_reason": ch["finish_reason"]}]}) + "\n\n"
    if (body.get("stream_options") or {}).get("include_usage"):
        yield "data: " + json.dumps({**base, "choices": [], "usage": resp.get("usage")}) + "\n\n"
    yield "data: [DONE]\n\n"


