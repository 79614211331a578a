"""Plain-dataclass engine statistics; server/metrics.py turns them into Prometheus."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EngineStats:
    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0        # fraction of KV blocks in use
    num_kv_blocks: int = 0
    block_size: int = 0
    prefix_cache_queries: int = 0      # tokens looked up (cumulative)
    prefix_cache_hits: int = 0         # tokens found (cumulative)
    num_preemptions: int = 0           # cumulative
    num_prompt_tokens: int = 0         # cumulative, computed prompt tokens of admitted requests
    num_generation_tokens: int = 0     # cumulative
    num_steps: int = 0
    spec_num_drafts: int = 0           # cumulative: verification rows groups (one per drafted step)
    spec_num_draft_tokens: int = 0     # cumulative: draft tokens proposed
    spec_num_accepted_tokens: int = 0  # cumulative: of which accepted
    finished_by_reason: dict[str, int] = field(default_factory=dict)
