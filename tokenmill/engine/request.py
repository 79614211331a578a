"""A Request is one sequence being generated (one of the n samples of a user request).

Its state is a single counter: `num_computed_tokens` catches up with `num_tokens`. A fresh
request, a chunked prefill, a prefix-cache hit and a recompute after preemption are all the
same thing seen through that counter.
"""
from __future__ import annotations

import enum
import hashlib
import time
from dataclasses import dataclass, field

import torch

from ..sampling_params import SamplingParams


def child_seed(seed: int, index: int) -> int:
    """Sample 0 uses the seed itself (so n=1 and the first of n agree); the others get a
    seed derived by hashing, so (seed 7, n=2) never shares a stream with seed 8."""
    if index == 0:
        return seed % 2**64  # any integer a client sends is a valid seed
    digest = hashlib.sha256(f"tokenmill-child:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self not in (RequestStatus.WAITING, RequestStatus.RUNNING)


@dataclass
class RequestMetrics:
    arrival_time: float = field(default_factory=time.time)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None


class Request:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 eos_ids: list[int], index: int = 0, parent_id: str | None = None,
                 arrival_time: float | None = None, cache_salt: str | None = None):
        self.request_id = request_id
        self.parent_id = parent_id or request_id
        self.index = index  # which of the parent's n samples
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.all_token_ids = list(prompt_token_ids)
        self.params = params
        self.eos_ids = [] if params.ignore_eos else list(eos_ids)
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at admission
        self.block_table: list[int] = []
        self.local_table: list[int] = []    # the sliding-window layers' blocks (block_manager.py)
        self.cache_salt = cache_salt        # prefix-cache sharing only among the same salt
        self.block_hashes: list[bytes] = []  # hash chain over full blocks, filled lazily
        self.num_hashed_blocks = 0          # blocks already registered in the prefix cache
        self.stop_reason: int | str | None = None
        self.draft: list[int] = []          # speculative tokens verified this step (spec_decode.py)
        self.spec = None                    # its SpecState, made at the first decode step
        self.logprobs: list[tuple[float, dict[int, float]]] = []
        self.raw_logits: list[torch.Tensor] = []  # (V,) per output token, only when asked for
        self.prompt_logprobs: list = [None] if params.prompt_logprobs is not None else []
        self.pooled: torch.Tensor | None = None     # (hidden,) running sum (mean) or the row (cls, last)
        self.embedding: list[float] | None = None   # the pooled prompt, once prefilled (params.pooling)
        self.metrics = RequestMetrics(arrival_time or time.time())
        # stateful processors (a grammar's matcher) are copied so that each sample has its own
        self.logits_processors = [p.clone() if index and hasattr(p, "clone") else p
                                  for p in params.logits_processors]
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(child_seed(params.seed, index))

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.status.is_finished else None
