"""Tool calling for models whose chat template knows no tools (SmolLM2's does not).

The tools go into a system message, with one documented format for a call (Hermes style):

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

Earlier turns are written the same way: an assistant message with tool_calls becomes that text,
a `role: "tool"` message becomes a user turn holding <tool_response>...</tool_response>.

tool_choice:
  none       no tools in the prompt, a plain answer
  auto       a free answer, or <tool_call> blocks that a grammar holds to the tools' schemas (an
             answer starting with '<' is read as a call); well-formed calls whose arguments
             validate become tool_calls, anything else (a call cut by max_tokens) stays `content`
  required   a grammar holds the answer to one call (a list of calls with parallel_tool_calls)
             of a known tool with valid arguments
  {"type": "function", "function": {"name": N}}   the same, for tool N only
"""
from __future__ import annotations

import json
import re
import uuid

from ..engine.structured import GrammarError, GrammarSpec
from ..api.errors import APIError

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def check_tools(tools) -> dict[str, dict]:
    """{name: parameters schema} of the request's tools (400 when malformed)."""
    out = {}
    for i, t in enumerate(tools or []):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise APIError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                           param="tools")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise APIError(400, f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
        out[fn["name"]] = params
    return out


def choice_of(tool_choice, tools: dict[str, dict]) -> tuple[str, str | None]:
    """(mode, forced name): mode is none | auto | required."""
    if tool_choice is None:
        return ("auto" if tools else "none"), None
    if tool_choice in ("none", "auto", "required"):
        if tool_choice != "none" and not tools:
            raise APIError(400, f"tool_choice `{tool_choice}` needs tools", param="tool_choice")
        return tool_choice, None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in tools:
            raise APIError(400, f"tool_choice names `{name}`, which is not among the tools", param="tool_choice")
        return "required", name
    raise APIError(400, "tool_choice must be none, auto, required or a named function", param="tool_choice")


def prompt_messages(messages: list[dict], raw_tools, mode: str) -> list[dict]:
    """The conversation in the documented tool format, with the tool list in the system message."""
    out = []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>{m['content']}</tool_response>"})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = "\n".join(f"<tool_call>{json.dumps({'name': c['name'], 'arguments': c['arguments']})}</tool_call>"
                              for c in m["tool_calls"])
            out.append({"role": "assistant", "content": ((m["content"] or "") + "\n" + calls).strip()})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if mode == "none" or not raw_tools:
        return out
    note = ("You can call these tools:\n<tools>\n" + "\n".join(json.dumps(t["function"]) for t in raw_tools)
            + "\n</tools>\nTo call one, answer with <tool_call>{\"name\": <tool name>, \"arguments\": "
              "<arguments object>}</tool_call> and nothing else.")
    if out and out[0]["role"] == "system":
        return [{"role": "system", "content": out[0]["content"] + "\n\n" + note}, *out[1:]]
    return [{"role": "system", "content": note}, *out]


def _call_schema(name: str, params: dict) -> dict:
    return {"type": "object", "properties": {"name": {"const": name}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False}


def grammar_for(tools: dict[str, dict], mode: str, forced: str | None, parallel: bool) -> GrammarSpec | None:
    """required / named: the answer is JSON, one call object (or a list of them).
    auto: free text (not starting with '<'), or <tool_call> blocks held to the tools' schemas."""
    if mode == "none":
        return None
    names = [forced] if forced else list(tools)
    one = {"anyOf": [_call_schema(n, tools[n]) for n in names]} if len(names) > 1 else _call_schema(names[0], tools[names[0]])
    try:
        if mode == "auto":
            call = json.loads(GrammarSpec.json_schema(one).value)  # with the compact JSON form
            repeat = '("\\n" call)*' if parallel else ""
            lark = (f"start: TEXT | calls\nTEXT: /[^<](.|\\n)*/\ncalls: call {repeat}\n"
                    f'call: "<tool_call>" %json {json.dumps(call)} "</tool_call>"\n')
            return GrammarSpec("grammar", lark)
        schema = {"type": "array", "items": one, "minItems": 1} if parallel and not forced else one
        return GrammarSpec.json_schema(schema)
    except GrammarError as e:
        raise APIError(400, f"tool parameters: {e}", param="tools") from e


def _valid(args, schema: dict) -> bool:
    try:
        import jsonschema
    except ImportError:  # validation is best effort without jsonschema; the grammar path needs none
        return isinstance(args, dict)
    try:
        jsonschema.validate(args, schema)
        return True
    except (jsonschema.ValidationError, jsonschema.SchemaError):
        return False


def parse_calls(text: str, tools: dict[str, dict], mode: str) -> list[dict] | None:
    """The tool calls in an answer, in OpenAI's shape, or None if it is a plain answer."""
    if mode == "none":
        return None
    if mode == "required":  # the grammar made it JSON: one call or a list of calls
        try:
            obj = json.loads(text)
        except ValueError:
            return None  # cut by max_tokens: stays content
        found = obj if isinstance(obj, list) else [obj]
    else:
        blocks = _CALL.findall(text)
        if not blocks or _CALL.sub("", text).strip():
            return None
        found = []
        for b in blocks:
            try:
                found.append(json.loads(b))
            except ValueError:
                return None
    calls = []
    for c in found:
        if not isinstance(c, dict) or c.get("name") not in tools or not _valid(c.get("arguments"), tools[c["name"]]):
            return None
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}})
    return calls


_CALL_HEAD = re.compile(r'\{"name": "([^"\\]*)", "arguments": ')


class CallStreamer:
    """Streams a required / named tool-call answer as it grows. The grammar writes each call as
    {"name": "N", "arguments": {...}} in compact form (alone, or in a list), so a call's first
    delta (index, id, name) goes out once its name is complete, then its arguments as they come."""

    def __init__(self):
        self.text = ""
        self.pos = 0            # scanned up to here
        self.index = -1         # the call being streamed
        self.in_args = False
        self.sent = 0           # argument text sent, as an offset into self.text
        self.depth = 0
        self.in_str = self.escape = False

    def feed(self, delta: str) -> list[dict]:
        self.text += delta
        out = []
        while True:
            if not self.in_args:
                m = _CALL_HEAD.search(self.text, self.pos)
                if not m:
                    return out
                self.index += 1
                out.append({"index": self.index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                            "function": {"name": m.group(1), "arguments": ""}})
                self.pos = self.sent = m.end()
                self.in_args, self.depth, self.in_str, self.escape = True, 0, False, False
            done = False
            while self.pos < len(self.text) and not done:
                ch = self.text[self.pos]
                self.pos += 1
                if self.in_str:
                    if self.escape:
                        self.escape = False
                    elif ch == "\\":
                        self.escape = True
                    elif ch == '"':
                        self.in_str = False
                elif ch == '"':
                    self.in_str, self.escape = True, False
                elif ch in "{[":
                    self.depth += 1
                elif ch in "}]":
                    self.depth -= 1
                    done = self.depth == 0
            if self.pos > self.sent:
                out.append({"index": self.index, "function": {"arguments": self.text[self.sent:self.pos]}})
                self.sent = self.pos
            if not done:
                return out
            self.in_args = False
