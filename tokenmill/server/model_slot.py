"""One model of the store as the server holds it (ModelSlot: its engine, its recommended
sampling, reasoning and pooling, its leases and keep_alive), and a request's view of the server
with its model in place of 'the model' (Served)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..api.errors import APIError


@dataclass
class ModelSlot:
    """One model of the store, loaded or loading: what the routes read of 'the model'."""
    name: str
    path: str
    settings: object
    engine: object = None
    load_error: str | None = None
    sampling: dict = field(default_factory=dict)  # recommended sampling (model/loader/sampling_defaults.py)
    sampling_source: str = ""
    pooling: str = "mean"                # how /v1/embeddings pools (model/loader/pooling.py)
    reasoning: bool = False              # answers' <think> blocks are split out (server/reasoning.py)
    leases: int = 0                      # requests using it now
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None      # monotonic; None: kept until room is needed
    keep_alive_s: float | None = None    # after the last lease ends (the last request's, else base)
    base_keep_alive_s: float | None = None  # a request that names none: --keep-alive (None: kept)
    size_bytes: int = 0                  # memory it holds (estimate, then measured at load)
    loaded_at: float = 0.0
    pinned: bool = False                 # an engine handed to create_app: never unloaded
    unloading: bool = False

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def engine_error(self) -> str | None:
        dead = getattr(self.engine, "dead", None)
        return f"{type(dead).__name__}: {dead}" if dead is not None else None

    def get_engine(self):
        if self.engine is None:
            if self.load_error:
                raise APIError(503, f"the model failed to load: {self.load_error}")
            raise APIError(503, "the model is still loading; retry shortly", headers={"Retry-After": "1"})
        if self.engine_error:
            raise APIError(503, f"the engine failed and the server is restarting: {self.engine_error}")
        return self.engine

    def pick(self, name: str, value, default=None):
        """A sampling field: the request's value; else the model's recommended one under
        serve --generation-config auto (as vLLM names it); else the protocol's default."""
        if value is not None:
            return value
        if self.settings.generation_config == "auto":
            return self.sampling.get(name, default)
        return default

    def configure(self, engine) -> None:
        """The model's recommended sampling, under serve --default-sampling; and whether its
        answers carry reasoning to split out (think tags in the vocabulary, or --reasoning-parser)."""
        from ..model.loader.sampling_defaults import parse, recommended
        from .reasoning import has_think_tokens
        s = self.settings
        self.reasoning = s.reasoning_parser == "think" or \
            (s.reasoning_parser == "auto" and has_think_tokens(engine.tokenizer))
        if s.embedding_pooling == "auto":
            from ..model.loader.pooling import pooling_of
            self.pooling = pooling_of(getattr(engine, "model_path", None))[0]
        else:
            self.pooling = s.embedding_pooling
        self.sampling, self.sampling_source = recommended(engine.model_path)
        if s.default_sampling:
            self.sampling = {**self.sampling, **parse(s.default_sampling)}
            self.sampling_source = "serve --default-sampling"


class Served:
    """One request's view: the server's state, with the request's model in place of 'the model'
    (engine, pick, reasoning, model_name, ...). What a route sets goes to the server state."""
    _SLOT = {f for f in ModelSlot.__dataclass_fields__} | {"model_name", "engine_error", "get_engine", "pick"}

    def __init__(self, state, slot: ModelSlot):
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "slot", slot)

    def __getattr__(self, name):
        return getattr(self.slot if name in Served._SLOT else self._state, name)

    def __setattr__(self, name, value):
        setattr(self._state, name, value)
