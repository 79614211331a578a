"""Chat templates (Jinja, from the model file) rendered in a sandbox.

A template comes from a downloaded file, so it must not reach Python internals
(CVE-2024-34359: llama-cpp-python rendered GGUF templates with a plain Environment).
ImmutableSandboxedEnvironment blocks attribute access to internals and mutation of inputs.
"""
from __future__ import annotations

import json
from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    pass


def _raise(message):
    raise ChatTemplateError(message)


def _tojson(x, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(x, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source
        self.template = env.from_string(source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ChatTemplateError("each message needs a 'role' and a 'content'")
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token, **kwargs)
        except ChatTemplateError:
            raise
        except TemplateError as e:  # includes SecurityError from the sandbox
            raise ChatTemplateError(f"chat template failed: {e}") from e
