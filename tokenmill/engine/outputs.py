"""Engine -> caller types. A RequestOutput is what one step reports about one user request."""
from __future__ import annotations

from dataclasses import dataclass, field

from .request import RequestMetrics


@dataclass
class CompletionOutput:
    index: int                 # which of the request's n samples
    text: str                  # all text so far
    token_ids: list[int]       # all output token ids so far
    text_delta: str = ""       # text new since the last output of this request
    token_ids_delta: list[int] = field(default_factory=list)
    logprobs: list[tuple[float, dict[int, float]]] | None = None  # per output token
    finish_reason: str | None = None   # stop | length | abort
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it
    raw_logits: list | None = None  # per output token, its raw logits row (V,): return_raw_logits
    embedding: list[float] | None = None  # the pooled prompt (SamplingParams.pooling), not normalized

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None
    # per prompt token: None for the first, then (logprob, {token id: logprob} of the top ones)
    prompt_logprobs: list | None = None
