"""Chat templates (Jinja, from the model file) rendered in a sandbox.

A template comes from a downloaded file, so it must not reach Python internals
(CVE-2024-34359: llama-cpp-python rendered GGUF templates with a plain Environment).
ImmutableSandboxedEnvironment blocks attribute access to internals and mutation of inputs.
A template can still loop for a long time or write a huge prompt: rendering runs in a helper
thread under a time limit (the thread is interrupted if it overruns) and a size limit.
"""
from __future__ import annotations

import ctypes
import json
import threading
from concurrent.futures import Future
from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    pass


class _Overrun(Exception):
    """Raised inside a render thread that has run past its time limit."""


RENDER_TIMEOUT_S = 2.0
MAX_RENDERED_CHARS = 4 * 2**20


def _interrupt(thread: threading.Thread) -> None:
    # the render is pure Python (compiled Jinja): an async exception stops it at the next bytecode
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Overrun))


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
        reserved = {"messages", "add_generation_prompt", "bos_token", "eos_token"} & set(kwargs)
        if reserved:
            raise ChatTemplateError(f"chat template variable {sorted(reserved)[0]!r} cannot be set by a request")
        context = dict(messages=messages, add_generation_prompt=add_generation_prompt,
                       bos_token=self.bos_token, eos_token=self.eos_token, **kwargs)
        done: Future = Future()
        worker = threading.Thread(target=self._render_into, args=(context, done), daemon=True,
                                  name="tokenmill-template")
        worker.start()
        worker.join(RENDER_TIMEOUT_S)
        if worker.is_alive():
            _interrupt(worker)
            worker.join(1.0)
            raise ChatTemplateError(f"chat template took longer than {RENDER_TIMEOUT_S:g} s to render")
        return done.result()

    def _render_into(self, context: dict, done: Future) -> None:
        try:
            parts, size = [], 0
            for piece in self.template.generate(**context):
                size += len(piece)
                if size > MAX_RENDERED_CHARS:
                    raise ChatTemplateError(f"the chat template rendered more than {MAX_RENDERED_CHARS} characters")
                parts.append(piece)
            done.set_result("".join(parts))
        except ChatTemplateError as e:
            done.set_exception(e)
        except _Overrun:
            done.set_exception(ChatTemplateError("chat template took too long to render"))
        except TemplateError as e:  # includes SecurityError from the sandbox
            done.set_exception(ChatTemplateError(f"chat template failed: {e}"))
        except Exception as e:  # a template's own runtime errors (1/0, bad types): the request's fault
            done.set_exception(ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}"))
