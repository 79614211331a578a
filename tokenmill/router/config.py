"""Router configuration; `tokenmill router` flags map onto these fields."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..api.affinity import PREFIX_CHARS


@dataclass
class RouteConfig:
    name: str
    urls: list[str]
    model: str | None = None          # model name to send upstream; None: the backend's own
    api_key_env: str | None = None    # env var holding the upstream API key
    price_in: float = 0.0             # $ per million prompt tokens
    price_out: float = 0.0            # $ per million completion tokens

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@dataclass
class ClassifierConfig:
    """Explainable task-complexity score; a request scoring >= large_threshold goes large."""
    large_threshold: float = 3.0
    chars_per_point: float = 600.0    # prompt length: one point per this many characters
    max_length_points: float = 3.0
    turn_weight: float = 0.25         # per user turn after the first
    code_weight: float = 1.5          # code fences or code-like lines
    reasoning_weight: float = 1.0     # per reasoning / analysis cue (capped)
    max_reasoning_points: float = 3.0
    multipart_weight: float = 0.5     # per numbered item or question beyond the first (capped)
    max_multipart_points: float = 2.0


@dataclass
class RouterConfig:
    routes: list[RouteConfig]
    policy: str = "least_outstanding"  # least_outstanding | prefix_affinity | round_robin
    affinity_prefix_chars: int = PREFIX_CHARS  # prefix that decides affinity
    affinity_max_imbalance: int = 4    # leave the affine replica when it has this many more in flight
    health_interval_s: float = 2.0
    health_timeout_s: float = 2.0      # a backend slower to answer /health is taken out
    request_timeout_s: float = 600.0
    max_retries: int = 2
    max_outstanding: int = 256         # requests in flight to backends at once
    max_queue: int = 512               # requests waiting for a slot; beyond: 429
    cache_url: str | None = None       # None: in-memory LRU; redis://host:port/db: shared
    cache_ttl_s: float = 3600.0
    cache_max_entries: int = 10000
    cache_max_bytes: int = 256 * 2**20  # the in-memory cache's answers, in all
    cache_enabled: bool = True
    ledger_path: str = "tokenmill-usage.sqlite"
    api_keys: dict[str, str] = field(default_factory=dict)  # key -> name; empty: open
    admin_keys: set[str] = field(default_factory=set)  # may see per-key figures; also valid API keys
    max_body_bytes: int = 4 * 2**20    # larger request bodies get 413 before they are read
    tenant_cache_salt: bool = True     # each tenant's prompts share prefix-cache blocks only among themselves
    rate_limit_rpm: int | None = None  # per key requests per minute
    rate_limit_tpm: int | None = None  # per key tokens per minute
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    include_backend_metrics: bool = False  # /metrics appends the first live backend's own

    def __post_init__(self):
        if not self.routes:
            raise ValueError("give at least one --backend URL or --route NAME=URL")
        if self.policy not in ("least_outstanding", "prefix_affinity", "round_robin"):
            raise ValueError("policy must be least_outstanding, prefix_affinity or round_robin")
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError("route names must be unique")
