"""OpenAI Responses request bodies (pydantic) and their translation to a ChatCall.

`input` is a string or a list of items: messages (content a string or input_text / output_text
parts), function_call and function_call_output items, and reasoning items (left out of the
prompt). Every field of the current `openai` SDK's responses.create is honoured or refused by
name with a 400; unknown fields are refused as OpenAI refuses them.
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..api.errors import APIError, refuse_fields
from ..engine.structured import GrammarError, GrammarSpec

# set to anything but their neutral value, these get a 400 that names them
_REFUSED = ("background", "conversation", "prompt", "max_tool_calls", "context_management", "moderation",
            "access_programs", "image", "background_options", "prompt_cache_options", "top_logprobs")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    input: str | list[dict[str, Any]] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None   # include_obfuscation: there is nothing to pad here
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None            # a routing hint upstream; prefix caching is automatic here
    prompt_cache_retention: str | None = None
    service_tier: Literal["auto", "default"] | None = None
    truncation: Literal["disabled"] | None = None  # "auto" (dropping old turns) is not built: 400
    include: list[str] | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    max_tool_calls: Any = None
    context_management: Any = None
    moderation: Any = None
    access_programs: Any = None
    image: Any = None
    background_options: Any = None
    prompt_cache_options: Any = None
    top_logprobs: int | None = None

    def refuse_unsupported(self) -> None:
        refuse_fields(self, _REFUSED)
        if self.include:
            raise APIError(400, f"include `{self.include[0]}` is not supported by this server", param="include")

    def grammar_spec(self) -> GrammarSpec | None:
        fmt = (self.text or {}).get("format")
        if fmt is None or fmt.get("type") == "text":
            return None
        try:
            if fmt.get("type") == "json_object":
                return GrammarSpec.json_schema({"type": "object"})
            if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
                return GrammarSpec.json_schema(fmt["schema"])
        except GrammarError as e:
            raise APIError(400, f"text.format: {e}", param="text.format") from e
        raise APIError(400, "text.format must be text, json_object or json_schema with a schema", param="text.format")

    def chat_tools(self) -> tuple[list[dict] | None, Any]:
        """Responses' flat function tools and tool_choice in chat-completions form."""
        out = []
        for i, t in enumerate(self.tools or []):
            if t.get("type") != "function":
                raise APIError(400, f"tools.{i}: tool type `{t.get('type')}` is not supported; only function tools",
                               param=f"tools.{i}.type")
            if not isinstance(t.get("name"), str) or not t["name"]:
                raise APIError(400, f"tools.{i}: a function tool needs a name", param=f"tools.{i}.name")
            out.append({"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters")
                                                          if t.get(k) is not None}})
        choice = self.tool_choice
        if isinstance(choice, dict):
            if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
                raise APIError(400, "tool_choice must be none, auto, required or {\"type\": \"function\", "
                                    "\"name\": ...}", param="tool_choice")
            choice = {"type": "function", "function": {"name": choice["name"]}}
        if not out and choice == "auto":
            choice = None
        return out or None, choice

    def enable_thinking(self) -> dict:
        effort = (self.reasoning or {}).get("effort")
        return {"enable_thinking": False} if effort in ("none", "minimal") else {}


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{where}: content must be a string or a list of parts", param=where)
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(part.get("text"), str):
            raise APIError(400, f"{where}: content part type `{kind}` is not supported; only text", param=where)
        texts.append(part["text"])
    return "\n".join(texts)


def input_messages(value) -> tuple[list[dict], list[dict]]:
    """(neutral messages, the input items as stored): a string is one user message."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}], [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    messages: list[dict] = []
    for i, item in enumerate(value):
        where = f"input.{i}"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise APIError(400, f"{where}.role must be user, assistant, system or developer", param=f"{where}.role")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _text(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            try:
                args = json.loads(item.get("arguments") or "{}")
            except (TypeError, ValueError) as e:
                raise APIError(400, f"{where}.arguments is not JSON: {e}", param=f"{where}.arguments") from e
            if not isinstance(item.get("name"), str):
                raise APIError(400, f"{where}: a function_call needs a name", param=f"{where}.name")
            call = {"name": item["name"], "arguments": args}
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls") is not None:
                messages[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            out = item.get("output")
            messages.append({"role": "tool", "content": out if isinstance(out, str) else _text(out, f"{where}.output")})
        elif kind == "reasoning":
            continue  # earlier reasoning is left out of the prompt, as thinking templates do
        else:
            raise APIError(400, f"{where}: input item type `{kind}` is not supported", param=f"{where}.type")
    return messages, [dict(x) for x in value]


def output_messages(output: list[dict]) -> list[dict]:
    """A response's output items as the neutral messages a next turn starts from."""
    messages: list[dict] = []
    for item in output:
        if item["type"] == "message":
            messages.append({"role": "assistant", "content": "".join(p["text"] for p in item["content"])})
        elif item["type"] == "function_call":
            call = {"name": item["name"], "arguments": json.loads(item["arguments"])}
            if messages and messages[-1].get("tool_calls") is not None:
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
    return messages
