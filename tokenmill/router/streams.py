"""What the router reads from the answers it passes on, in each protocol: usage for the ledger
(OpenAI `usage`, Responses' and Anthropic's `input_tokens`/`output_tokens`, Ollama
`prompt_eval_count`/`eval_count`, TGI `details.generated_tokens`) and, for OpenAI streams, the
whole answer for the response cache."""
from __future__ import annotations

import json

from ..api.errors import protocol_of
from ..api.sse import SSE_DONE, ndjson, sse

def _normal(usage) -> dict | None:
    """Responses' and Anthropic's counts in OpenAI's names (Anthropic's input_tokens leave out
    the prompt tokens read from its cache)."""
    if isinstance(usage, dict) and "input_tokens" in usage:
        return {"prompt_tokens": (usage.get("input_tokens") or 0) + (usage.get("cache_read_input_tokens") or 0),
                "completion_tokens": usage.get("output_tokens") or 0}
    return usage if isinstance(usage, dict) else None


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
    return _normal(obj.get("usage"))


def usage_of(content: bytes, path: str) -> dict | None:
    try:
        obj = json.loads(content)
        if isinstance(obj, list):  # TGI's POST / answers a list
            obj = obj[0] if obj else {}
        return _usage_from(obj, protocol_of(path))
    except (ValueError, AttributeError, TypeError, IndexError):
        return None


class StreamAccumulator:
    """Reads a stream as it passes: usage for the ledger (so far, when the backend sends counts
    in every chunk, as the router asks it to), whether it ended properly, and (for OpenAI) the
    whole answer for the cache. feed() gives the line to pass on to the client, without what
    the router asked for and the client did not; None drops it."""

    def __init__(self, path: str, client_usage: bool = False, client_continuous: bool = False):
        self.kind = protocol_of(path)
        self.events = self.kind == "anthropic" or path.startswith("/v1/responses")  # named-event streams
        self.chat = path.endswith("chat/completions")
        self.client_usage, self.client_continuous = client_usage, client_continuous
        self.texts: dict[int, str] = {}
        self.finish: dict[int, str] = {}
        self.usage = None
        self.done = False
        self.cacheable = True
        self.meta: dict = {}

    def feed(self, line: str) -> str | None:
        if self.events:
            return self._feed_events(line)
        if self.kind != "openai":
            return self._feed_other(line)
        if not line.startswith("data:"):
            return line
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return line
        try:
            event = json.loads(data)
        except ValueError:
            return line
        if "error" in event:
            self.cacheable = False
            return line
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
        if not event.get("choices"):  # the usage-only chunk: to those who asked
            return line if self.client_usage else None
        if "usage" in event and not self.client_continuous:
            if self.client_usage:
                event["usage"] = None  # as the backend sends it to a client that asked for usage only
            else:
                del event["usage"]
            return sse(event).rstrip("\n")
        return line

    def _feed_events(self, line: str) -> str:
        """Responses: the usage is in response.completed (or .incomplete / .failed); Anthropic:
        input tokens in message_start, output tokens in message_delta, message_stop ends it.
        The backend's token counts come as SSE comments, dropped here; every other line passes
        unchanged; nothing is cached from these streams."""
        self.cacheable = False
        if line.startswith(": tokens "):  # the backend's count so far (api/sse.py sse_count): ours only
            if line[9:].strip().isdigit():
                prompt = (self.usage or {}).get("prompt_tokens", 0)
                self.usage = {"prompt_tokens": prompt, "completion_tokens": int(line[9:].strip())}
            return None
        if not line.startswith("data:"):
            return line
        try:
            event = json.loads(line[5:].strip())
        except ValueError:
            return line
        kind = event.get("type") if isinstance(event, dict) else None
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self.usage = _normal((event.get("response") or {}).get("usage")) or self.usage
            self.done = kind != "response.failed"
        elif kind == "message_start":
            self.usage = _normal((event.get("message") or {}).get("usage"))
        elif kind == "message_delta":
            prompt = (self.usage or {}).get("prompt_tokens", 0)
            self.usage = {"prompt_tokens": prompt, "completion_tokens": (event.get("usage") or {}).get("output_tokens", 0)}
        elif kind == "message_stop":
            self.done = True
        return line

    def _feed_other(self, line: str) -> str:
        # Ollama: NDJSON, the last line has done: true and the counts; TGI: SSE, every event
        # has the token's index, the last one has details
        data = line[5:].strip() if line.startswith("data:") else line.strip()
        if not data:
            return line
        try:
            event = json.loads(data)
        except ValueError:
            return line
        if not isinstance(event, dict):
            return line
        if "error" in event:
            self.cacheable = False
            return line
        if self.kind == "tgi" and isinstance(event.get("index"), int):
            self.usage = {"prompt_tokens": 0, "completion_tokens": event["index"]}
        usage = _usage_from(event, self.kind)
        if usage is not None:
            self.usage = usage
        if event.get("done") is True or (self.kind == "tgi" and event.get("details")):
            self.done = True
        if self.kind == "ollama" and event.get("done") is False and "eval_count" in event:
            event.pop("eval_count")  # counts the router asked for, in a line Ollama sends without
            event.pop("prompt_eval_count", None)
            return ndjson(event).rstrip("\n")
        return line

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
                yield sse({**base, "choices": [{"index": i, "delta": delta, "logprobs": None,
                                                "finish_reason": finish}]})
        else:
            yield sse({**base, "choices": [{"index": i, "text": ch["text"], "logprobs": None,
                                            "finish_reason": ch["finish_reason"]}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        yield sse({**base, "choices": [], "usage": resp.get("usage")})
    yield SSE_DONE


