"""Per-request generation parameters, validated once at the door."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# A logits processor sees one request's output token ids so far and its logits row (V,)
# after penalties and bias, and returns the row to sample from (e.g. with tokens masked to
# -inf). Structured output and speculative decoding plug in here.
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


MAX_STOP = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int | None = 16  # None: until EOS or the context is full
    min_tokens: int = 0
    temperature: float = 1.0     # 0 means greedy
    top_k: int = 0               # 0 or -1: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 0      # penalties look at the last n tokens only (Ollama's repeat_last_n); 0: all
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top logprobs per token (0: only the sampled one)
    prompt_logprobs: int | None = None  # the same for each prompt token (the first has none)
    skip_special_tokens: bool = True
    speculative: bool = True     # n-gram speculative decoding where the engine has it on
    return_raw_logits: bool = False  # keep each step's raw logits row (V,) for the token explorer
    pooling: str | None = None   # mean | last | cls: embed the prompt (prefill only, no token sampled)
    logits_processors: list[LogitsProcessor] = field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        if self.top_k == -1:
            self.top_k = 0
        checks = [
            (self.n >= 1, "n must be at least 1"),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be at least 1"),
            (self.min_tokens >= 0, "min_tokens must be non-negative"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens,
             "min_tokens must not exceed max_tokens"),
            (self.temperature >= 0, "temperature must be non-negative"),
            (self.top_k >= 0, "top_k must be -1, 0 (off) or positive"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be positive"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (self.penalty_last_n >= 0, "penalty_last_n must be non-negative"),
            (self.pooling in (None, "mean", "last", "cls"), "pooling must be mean, last or cls"),
            (all(-100 <= v <= 100 for v in self.logit_bias.values()), "logit_bias values must be in [-100, 100]"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
            (self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20, "prompt_logprobs must be in [0, 20]"),
            # both are checked at every step: bounded, so that no request slows everyone's steps
            (len(self.stop) <= MAX_STOP, f"stop may hold at most {MAX_STOP} strings"),
            (all(len(s) <= MAX_STOP_CHARS for s in self.stop), f"each stop string may be at most {MAX_STOP_CHARS} characters"),
            (len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS, f"stop_token_ids may hold at most {MAX_STOP_TOKEN_IDS} ids"),
        ]
        if self.logits_processors and any(hasattr(p, "matcher") for p in self.logits_processors):
            checks += [(not self.ignore_eos, "ignore_eos cannot be combined with structured output"),
                       (self.min_tokens == 0, "min_tokens cannot be combined with structured output")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < 1e-5

    @property
    def has_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0
                or self.presence_penalty != 0.0)
