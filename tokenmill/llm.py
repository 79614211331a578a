"""Offline facade: LLM(...).generate / .chat / .stream, like vLLM's LLM class."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

from .config import EngineConfig
from .engine.engine import LLMEngine
from .engine.outputs import RequestOutput
from .sampling_params import SamplingParams

Messages = list[dict]


class LLM:
    def __init__(self, model: str | None = None, **engine_args):
        known = {f.name for f in fields(EngineConfig)}
        unknown = set(engine_args) - known
        if unknown:
            raise TypeError(f"unknown engine argument(s): {', '.join(sorted(unknown))}")
        self.engine = LLMEngine(EngineConfig(model=model, **engine_args))
        self.tokenizer = self.engine.tokenizer

    def generate(self, prompts: str | list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run all prompts batched together; outputs come back in prompt order.
        A prompt is a string or a list of token ids."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError("give one SamplingParams, or one per prompt")
        ids = []
        for prompt, p in zip(prompts, params_list):
            if isinstance(prompt, str):
                ids.append(self.engine.add_request(prompt=prompt, params=p))
            else:
                ids.append(self.engine.add_request(prompt_token_ids=list(prompt), params=p))
        final: dict[str, RequestOutput] = {}
        while len(final) < len(ids):
            for out in self.engine.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[i] for i in ids]

    def chat(self, messages: Messages | list[Messages],
             params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """messages: one conversation [{"role", "content"}, ...] or a list of them."""
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        return self.generate([self.tokenizer.encode_chat(c) for c in convs], params)

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the text of one request as it is produced."""
        params = params or SamplingParams()
        if isinstance(prompt, str):
            rid = self.engine.add_request(prompt=prompt, params=params)
        else:
            rid = self.engine.add_request(prompt_token_ids=list(prompt), params=params)
        try:
            while True:
                for out in self.engine.step():
                    if out.request_id != rid:
                        continue
                    if out.outputs[0].text_delta:
                        yield out.outputs[0].text_delta
                    if out.finished:
                        return
        finally:
            self.engine.abort_request(rid)  # a caller that stops early frees the blocks

    def chat_stream(self, messages: Messages, params: SamplingParams | None = None) -> Iterator[str]:
        return self.stream(self.tokenizer.encode_chat(messages), params)
