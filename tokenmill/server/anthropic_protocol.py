"""Anthropic Messages request bodies (pydantic) and their translation to a ChatCall.

Every field of the current `anthropic` SDK's messages.create is either honoured or refused by
name with a 400; fields nobody sends are refused as unknown (400), as Anthropic does.
temperature, top_p and top_k are honoured: older clients and LangChain send them (the 2.x SDK
only through extra_body).
"""
from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..api.errors import APIError, refuse_fields
from ..engine.structured import GrammarError, GrammarSpec
from .chat_core import ChatCall


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Block(BaseModel):
    """A content block; which fields matter depends on its type."""
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: str | list[dict[str, Any]] | None = None
    is_error: bool | None = None


class Message(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")  # cache_control, strict, eager_input_streaming...
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


# Fields of the SDK that this server cannot honour: a request that sets one gets a 400 naming it.
_REFUSED = ("container", "diagnostics", "inference_geo", "speed", "user_profile_id", "workspace_id",
            "mcp_servers", "context_management")


class _Common(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[Block] | None = None
    tools: list[Tool] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None   # prompt caching is automatic here (prefix cache)
    container: Any = None
    diagnostics: Any = None
    inference_geo: Any = None
    speed: Any = None
    user_profile_id: Any = None
    workspace_id: Any = None
    mcp_servers: Any = None
    context_management: Any = None

    def chat_call(self) -> ChatCall:
        refuse_fields(self, _REFUSED)
        messages = []
        if self.system:
            messages.append({"role": "system", "content": _text_of(self.system, "system")})
        for i, m in enumerate(self.messages):
            messages.extend(_message(m, i))
        tools = [_tool(t, i) for i, t in enumerate(self.tools or [])]
        choice, parallel = _tool_choice(self.tool_choice)
        budget = (self.thinking or {}).get("budget_tokens") if (self.thinking or {}).get("type") == "enabled" else None
        # a last assistant turn with text is a prefill: the answer goes on from it (Anthropic's
        # way to start an answer, e.g. with "{"); trailing whitespace is refused there, as Anthropic does
        last = messages[-1]
        prefill = last["role"] == "assistant" and not last.get("tool_calls") and bool(last["content"])
        if prefill and last["content"] != last["content"].rstrip():
            raise APIError(400, "final assistant content cannot end with trailing whitespace", param="messages")
        return ChatCall(messages, tools or None, choice if tools or choice != "auto" else None, parallel,
                        self._format(), self._thinking_kwargs(), continue_final=prefill,
                        add_generation_prompt=not prefill, fit_max_tokens=True, thinking_budget=budget)

    def _format(self) -> GrammarSpec | None:
        oc = self.output_config or {}
        unknown = set(oc) - {"format", "effort"}
        if unknown:
            raise APIError(400, f"output_config.{sorted(unknown)[0]}: unknown field", param="output_config")
        if oc.get("effort") is not None:
            raise APIError(400, "`output_config.effort` is not supported by this server", param="output_config.effort")
        fmt = oc.get("format")
        if fmt is None:
            return None
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise APIError(400, "output_config.format must be {\"type\": \"json_schema\", \"schema\": {...}}",
                           param="output_config.format")
        try:
            return GrammarSpec.json_schema(fmt["schema"])
        except GrammarError as e:
            raise APIError(400, f"output_config.format: {e}", param="output_config.format") from e

    def _thinking_kwargs(self) -> dict:
        """thinking enabled / adaptive: the template may open a think block; disabled or
        absent (Anthropic's default is no thinking): enable_thinking false."""
        t = self.thinking
        if t is None:
            return {"enable_thinking": False}
        kind = t.get("type")
        if kind not in ("enabled", "disabled", "adaptive"):
            raise APIError(400, "thinking.type must be enabled, adaptive or disabled", param="thinking.type")
        if kind == "enabled":
            budget = t.get("budget_tokens")
            if not isinstance(budget, int) or budget < 1024:
                raise APIError(400, "thinking.budget_tokens must be an integer >= 1024", param="thinking.budget_tokens")
            max_tokens = getattr(self, "max_tokens", None)
            if max_tokens is not None and budget >= max_tokens:
                raise APIError(400, "thinking.budget_tokens must be less than max_tokens", param="thinking.budget_tokens")
        return {"enable_thinking": kind != "disabled"}


class MessagesRequest(_Common):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None       # user_id: recorded by nothing, changes nothing
    service_tier: Literal["auto", "standard_only"] | None = None  # one tier here: both are honoured


class CountTokensRequest(_Common):
    pass


def _text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for b in content:
        b = b if isinstance(b, Block) else Block.model_validate(b)
        if b.type != "text" or b.text is None:
            raise APIError(400, f"{where}: content block type `{b.type}` is not supported here; only text",
                           param=where)
        texts.append(b.text)
    return "\n".join(texts)


def _message(m: Message, i: int) -> list[dict]:
    """One Anthropic message as neutral messages: tool results become tool turns (first, as
    they answer the previous assistant's calls), tool_use blocks become tool_calls, earlier
    thinking is left out of the prompt (as thinking models' own templates drop it)."""
    where = f"messages.{i}.content"
    if isinstance(m.content, str):
        return [{"role": m.role, "content": m.content}]
    texts, calls, results = [], [], []
    for b in m.content:
        if b.type == "text" and b.text is not None:
            texts.append(b.text)
        elif b.type == "tool_use" and m.role == "assistant":
            if not b.name or not isinstance(b.input, dict):
                raise APIError(400, f"{where}: a tool_use block needs a name and an input object", param=where)
            calls.append({"name": b.name, "arguments": b.input})
        elif b.type == "tool_result" and m.role == "user":
            body = b.content if b.content is not None else ""
            text = body if isinstance(body, str) else _text_of(body, where)
            results.append({"role": "tool", "content": ("Error: " + text) if b.is_error else text})
        elif b.type in ("thinking", "redacted_thinking") and m.role == "assistant":
            continue
        else:
            raise APIError(400, f"{where}: content block type `{b.type}` is not supported in a {m.role} message",
                           param=where)
    out = list(results)
    if texts or calls or not results:
        msg = {"role": m.role, "content": "\n".join(texts)}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def _tool(t: Tool, i: int) -> dict:
    if t.type not in (None, "custom"):
        raise APIError(400, f"tools.{i}: server tool `{t.type}` is not supported; only custom tools",
                       param=f"tools.{i}.type")
    schema = t.input_schema if t.input_schema is not None else {"type": "object", "properties": {}}
    return {"type": "function", "function": {"name": t.name, "description": t.description or "",
                                             "parameters": schema}}


def _tool_choice(choice: dict | None) -> tuple[Any, bool]:
    """Anthropic's tool_choice as the OpenAI one, and whether parallel calls are allowed."""
    if choice is None:
        return "auto", True
    kind, parallel = choice.get("type"), not choice.get("disable_parallel_tool_use", False)
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", parallel
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise APIError(400, "tool_choice.type must be auto, any, tool (with a name) or none", param="tool_choice")


def tool_use_block(call: dict) -> dict:
    """An OpenAI-shaped call (tools.parse_calls) as a tool_use block."""
    fn = call["function"]
    return {"type": "tool_use", "id": "toolu_" + call["id"].removeprefix("call_"), "name": fn["name"],
            "input": json.loads(fn["arguments"])}
