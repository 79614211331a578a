"""What every chat-shaped protocol shares: OpenAI chat, the Responses API and Anthropic Messages
each turn their body into a ChatCall (messages in one neutral shape, OpenAI-style function
tools, a tool choice, a structured-output spec, template variables), and get back a ChatRun:
the prompt, the admitted stream, and how to read an answer (reasoning, text, tool calls).

Neutral messages: {"role": system|user|assistant|tool, "content": str, "tool_calls":
[{"name", "arguments": dict}]?}; a tool message answers a call (tools.prompt_messages writes
both in the documented tool format).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..api.errors import APIError
from ..engine.structured import GrammarSpec
from ..sampling_params import SamplingParams
from . import structured, tools
from ..engine.thinking_budget import ThinkingBudget
from .reasoning import CLOSE, OPEN, ReasoningSplitter, prompt_opens_thought, split_stream
from .serving import GenerationRequest, chat_prompt_ids, off_loop, submit


@dataclass
class ChatCall:
    messages: list[dict]
    tools: list[dict] | None = None      # [{"type": "function", "function": {name, description, parameters}}]
    tool_choice: Any = None              # none | auto | required | {"type": "function", "function": {"name"}}
    parallel_tool_calls: bool = True
    spec: GrammarSpec | None = None      # structured output of a plain answer
    template_kwargs: dict = field(default_factory=dict)
    continue_final: bool = False
    add_generation_prompt: bool = True
    # agent clients send a max_tokens far past a local model's context (32k and more): cut it to
    # the room the context leaves, as llama.cpp's server does, instead of refusing (Anthropic, Responses)
    fit_max_tokens: bool = False
    thinking_budget: int | None = None   # reasoning tokens at most (engine/thinking_budget.py)


@dataclass
class ChatRun:
    prompt_ids: list[int]
    params: SamplingParams
    stream: Any                          # async iterator of RequestOutput
    mode: str                            # tool mode: none | auto | required
    tool_schemas: dict[str, dict]
    in_thought: bool                     # the prompt ends inside an open think block
    reasoning: bool                      # this model's reasoning is split out

    def calls_of(self, text: str) -> list[dict] | None:
        """The tool calls of a finished answer (OpenAI's shape), or None for a plain answer."""
        return tools.parse_calls(text, self.tool_schemas, self.mode) if self.mode != "none" else None

    def split(self, text: str) -> tuple[str, str]:
        """(reasoning, answer) of a finished sample's text."""
        return ReasoningSplitter.split(text, self.in_thought) if self.reasoning else ("", text)

    def outputs(self):
        """The stream for a streaming encoder: reasoning split out (reasoning_delta), then tool
        calls found (tool_deltas for required calls as they grow; tool_calls once an auto-mode
        call has finished)."""
        gen = split_stream(self.stream, self.in_thought) if self.reasoning else self.stream
        if self.mode == "required":
            return stream_required(gen)
        if self.mode == "auto":
            return stream_auto(gen, self.calls_of)
        return gen


@dataclass
class Prompt:
    ids: list[int]
    mode: str
    schemas: dict[str, dict]
    grammar: GrammarSpec | None          # the tool grammar, or the structured-output spec


async def render(state, call: ChatCall) -> Prompt:
    """The prompt's token ids (tools in it), and the grammar the answer is held to."""
    engine = state.get_engine()
    schemas = tools.check_tools(call.tools)
    mode, forced = tools.choice_of(call.tool_choice, schemas)
    tool_spec = tools.grammar_for(schemas, mode, forced, call.parallel_tool_calls)
    if tool_spec is not None and call.spec is not None:
        raise APIError(400, "tools (unless tool_choice is none) and a structured output format cannot be combined",
                       param="response_format")
    messages = tools.prompt_messages(call.messages, call.tools, mode)
    ids = await off_loop(chat_prompt_ids, engine, messages, call.continue_final,
                         call.add_generation_prompt, call.template_kwargs)
    return Prompt(ids, mode, schemas, tool_spec or call.spec)


async def start_chat(state, request, call: ChatCall, params_for: Callable[[list], SamplingParams],
                     stream: bool, request_id: str, cache_salt: str | None = None) -> ChatRun:
    """Prompt, grammar, admission. params_for(logits processors) builds the protocol's
    SamplingParams. Errors are APIErrors (400 for what the request got wrong)."""
    engine = state.get_engine()
    prompt = await render(state, call)
    reasoning = bool(getattr(state, "reasoning", False))
    in_thought = reasoning and prompt_opens_thought(engine.tokenizer, prompt.ids)
    processors = await structured.processors(engine, prompt.grammar)
    if call.thinking_budget is not None and reasoning:
        tok = engine.tokenizer
        (open_id,), (close_id,) = (tok.encode(t, add_special_tokens=False) for t in (OPEN, CLOSE))
        processors = [ThinkingBudget(call.thinking_budget, open_id, close_id, in_thought), *processors]
    params = params_for(processors)
    room = engine.max_model_len - len(prompt.ids)
    if call.fit_max_tokens and params.max_tokens is not None and 1 <= room < params.max_tokens:
        params.max_tokens = room
    out = await submit(state, request, GenerationRequest(prompt.ids, params, stream, request_id, cache_salt))
    return ChatRun(prompt.ids, params, out, prompt.mode, prompt.schemas, in_thought, reasoning)


def _hold(c) -> None:
    """A sample's whole text so far goes out as its delta (it was held back)."""
    c.text_delta = c.text
    c.token_ids_delta = list(c.token_ids)
    if c.logprobs is not None:
        c.logprobs = list(c.logprobs)


async def stream_required(stream):
    """A required / named tool call streams as it is generated: the first delta of each call
    (index, id, name) once its name is complete, then its arguments in chunks."""
    readers: dict[int, tools.CallStreamer] = {}
    async for out in stream:
        for c in out.outputs:
            reader = readers.setdefault(c.index, tools.CallStreamer())
            c.tool_deltas = reader.feed(c.text_delta)
            c.called = reader.index >= 0
            c.text_delta = ""
        yield out


async def stream_auto(stream, calls_of):
    """tool_choice auto: the grammar lets an answer be text (never starting with '<') or calls
    (starting with '<tool_call>'). Text streams as it comes; a call is held back and handed on
    once finished, as tool calls (or as text, if it does not parse). Reasoning streams always."""
    mode: dict[int, str] = {}  # per sample: "text" | "call", once its first character is known
    done: set[int] = set()
    async for out in stream:
        outputs = []
        for c in out.outputs:
            if c.index in done:
                continue
            if c.index not in mode and c.text:
                mode[c.index] = "call" if c.text.startswith("<") else "text"
                _hold(c)  # what was held while undecided
            if c.finish_reason:
                done.add(c.index)
            if mode.get(c.index) == "text":
                outputs.append(c)
            elif c.finish_reason:  # a call (or an empty answer) ends: all of it at once
                c.tool_calls = calls_of(c.text) if mode.get(c.index) == "call" else None
                _hold(c)
                if c.tool_calls:
                    c.text_delta = ""
                outputs.append(c)
            elif getattr(c, "reasoning_delta", ""):  # thinking before the answer is known
                c.text_delta, c.token_ids_delta = "", []
                outputs.append(c)
        if outputs:
            out.outputs = outputs
            yield out
