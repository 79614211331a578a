"""Each protocol's way of asking for structured output, to one GrammarSpec:

OpenAI  response_format {"type": "json_object"} | {"type": "json_schema", "json_schema": {...}};
        vLLM's structured_outputs {"json" | "regex" | "choice" | "grammar"} and the older
        guided_json / guided_regex / guided_choice / guided_grammar
Ollama  format "json" | a JSON schema
TGI     parameters.grammar {"type": "json" | "json_schema" | "regex", "value": ...}

Compilation runs off the event loop; a bad grammar is a 400 that says what is wrong.
"""
from __future__ import annotations

import asyncio

from ..engine.structured import GrammarError, GrammarSpec
from ..api.errors import APIError


def _one(specs: list[tuple[str, GrammarSpec]]) -> GrammarSpec | None:
    if len(specs) > 1:
        raise APIError(400, f"give one kind of structured output, not {', '.join(n for n, _ in specs)}")
    return specs[0][1] if specs else None


def _guided(body, param_prefix: str = "") -> list[tuple[str, GrammarSpec]]:
    specs = []
    so = getattr(body, "structured_outputs", None) or {}
    if not isinstance(so, dict):
        raise APIError(400, "structured_outputs must be an object", param="structured_outputs")
    for key, value in list(so.items()) + [(k[7:], getattr(body, k, None)) for k in
                                          ("guided_json", "guided_regex", "guided_choice", "guided_grammar")]:
        if value is None or key in ("disable_fallback", "disable_additional_properties", "whitespace_pattern"):
            continue
        name = f"structured_outputs.{key}" if key in so else f"guided_{key}"
        if key == "json":
            specs.append((name, GrammarSpec.json_schema(value)))
        elif key == "json_object" and value:
            specs.append((name, GrammarSpec.json_schema({"type": "object"})))
        elif key in ("regex", "grammar"):
            if not isinstance(value, str) or not value:
                raise APIError(400, f"{name} must be a non-empty string", param=name)
            specs.append((name, GrammarSpec(key, value)))
        elif key == "choice":
            specs.append((name, GrammarSpec.choice(value)))
        else:
            raise APIError(400, f"unknown structured output kind `{key}`", param=name)
    return specs


def openai_spec(body) -> GrammarSpec | None:
    try:
        specs = _guided(body)
        rf = getattr(body, "response_format", None)
        if rf is not None:
            if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
                raise APIError(400, "response_format.type must be text, json_object or json_schema",
                               param="response_format")
            if rf["type"] == "json_object":
                specs.append(("response_format", GrammarSpec.json_schema({"type": "object"})))
            elif rf["type"] == "json_schema":
                js = rf.get("json_schema")
                if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
                    raise APIError(400, "response_format.json_schema must be an object with a `schema`",
                                   param="response_format")
                specs.append(("response_format", GrammarSpec.json_schema(js.get("schema") or {"type": "object"})))
        return _one(specs)
    except GrammarError as e:
        raise APIError(400, str(e), param="response_format") from e


def ollama_spec(fmt) -> GrammarSpec | None:
    if fmt in (None, ""):
        return None
    try:
        if fmt == "json":
            return GrammarSpec.json_schema({"type": "object"})
        if isinstance(fmt, dict):
            return GrammarSpec.json_schema(fmt)
    except GrammarError as e:
        raise APIError(400, str(e)) from e
    raise APIError(400, 'format must be "json" or a JSON schema object')


def tgi_spec(grammar) -> GrammarSpec | None:
    if grammar is None:
        return None
    if not isinstance(grammar, dict) or grammar.get("type") not in ("json", "json_schema", "regex"):
        raise APIError(400, "grammar must be {\"type\": \"json\" | \"regex\", \"value\": ...}")
    value = grammar.get("value")
    try:
        if grammar["type"] == "regex":
            if not isinstance(value, str) or not value:
                raise APIError(400, "a regex grammar needs a non-empty string value")
            return GrammarSpec("regex", value)
        return GrammarSpec.json_schema(value if value is not None else {"type": "object"})
    except GrammarError as e:
        raise APIError(400, str(e)) from e


async def processors(engine, spec: GrammarSpec | None) -> list:
    """[the compiled grammar's logits processor], or [] without structured output."""
    if spec is None:
        return []
    try:
        return [await asyncio.to_thread(engine.structured.compile, spec)]
    except GrammarError as e:
        raise APIError(400, str(e), param="response_format") from e

