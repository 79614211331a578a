"""Models loaded on demand, kept while used, unloaded when idle (Ollama's scheduler, in small).

A request names its model; `use_model` leases it for the request's whole life (streams
included: the lease is returned by the ASGI middleware below when the response has ended).
A model not loaded is loaded (one load at a time, in a thread: requests for loaded models
keep flowing). Once its last lease is returned a model stays for its keep_alive (the request's
or --keep-alive; 0 unloads at once; negative keeps it). Loading one more model that would go
past --max-loaded-bytes first unloads the least recently used idle ones; when every loaded
model is busy the request gets 503 + Retry-After, and a model larger than the whole budget 507.
Each loaded model is its own AsyncLLMEngine: its own thread, its own batch, its own KV cache.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import time

from fastapi import Request

from ..api.errors import APIError
from ..store.catalog import ModelStore, StoreError, StoredModel, canonical
from .keep_alive import parse_keep_alive
from .model_slot import ModelSlot, Served


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
    """Freed tensors below glibc's mmap threshold stay in its heap unless trimmed."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def default_budget() -> int:
    """Three quarters of the machine's memory."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.75)


class ModelPool:
    def __init__(self, state, store: ModelStore, config, budget_bytes: int | None = None,
                 keep_alive_s: float | None = 300.0):
        self.state, self.store, self.config = state, store, config
        self.budget = budget_bytes or default_budget()
        self.keep_alive_s = keep_alive_s
        self.slots: dict[str, ModelSlot] = {}
        self._load_lock: asyncio.Lock | None = None
        self.loads = 0
        self.unloads = 0

    # ---- what is loaded ------------------------------------------------------------------
    def loaded(self) -> list[ModelSlot]:
        return [s for s in self.slots.values() if s.engine is not None and not s.unloading]

    def engines(self) -> list:
        return [s.engine for s in self.slots.values() if s.engine is not None]

    def used_bytes(self) -> int:
        return sum(s.size_bytes for s in self.slots.values())

    def add_loaded(self, name: str, path: str, engine, pinned: bool = False) -> ModelSlot:
        slot = ModelSlot(canonical(name), path, self.state.settings, pinned=pinned,
                         loaded_at=time.time())
        slot.configure(engine)
        slot.engine = engine
        slot.size_bytes = getattr(engine, "file_size", 0)
        self.slots[slot.name] = slot
        return slot

    def estimate(self, m: StoredModel) -> int:
        """Memory a model will hold: its weights at their file's bits (GGUF; an HF directory's
        float weights are quantized to int8 on CPU) and its KV cache."""
        if m.info.get("format") == "gguf":
            weights = m.size
        else:  # float32 (4 bytes) or 16-bit (2) weights -> int8
            weights = m.size // (4 if m.info.get("quantization") == "F32" else 2)
        return int(weights + self.config.kv_cache_memory_gib * 2**30 + 64 * 2**20)

    # ---- leases --------------------------------------------------------------------------
    async def acquire(self, name: str, keep_alive=None) -> ModelSlot:
        keep = self._keep(keep_alive)
        slot = self._ready(canonical(name))
        if slot is None:  # the store's files are read off the event loop
            try:
                m = await asyncio.to_thread(self.store.resolve, name)
            except StoreError as e:
                names = await asyncio.to_thread(self.names)
                raise APIError(e.status, f"The model `{name}` does not exist. This server has: "
                                         f"{', '.join(names) or 'no models'}.",
                               param="model", code="model_not_found") from e
            slot = await self._load(m)
        slot.leases += 1
        slot.last_used = time.monotonic()
        slot.expires_at = None
        slot.keep_alive_s = slot.base_keep_alive_s if keep is _UNSET else keep
        return slot

    def release(self, slot: ModelSlot) -> None:
        slot.leases -= 1
        slot.last_used = time.monotonic()
        if slot.leases > 0 or slot.pinned:
            return
        keep = slot.keep_alive_s
        if keep is None:
            slot.expires_at = None
        elif keep <= 0:
            asyncio.get_running_loop().create_task(self.unload(slot.name))
        else:
            slot.expires_at = time.monotonic() + keep

    def _keep(self, keep_alive):
        if keep_alive is None:
            return _UNSET
        return parse_keep_alive(keep_alive)

    def _ready(self, name: str) -> ModelSlot | None:
        slot = self.slots.get(name)
        if slot is not None and slot.engine is not None and not slot.unloading:
            return slot
        return None

    def names(self) -> list[str]:
        return list(self.store.paths())

    # ---- load and unload -----------------------------------------------------------------
    async def _load(self, m: StoredModel) -> ModelSlot:
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:  # one load at a time; a waiter may find it loaded
            slot = self._ready(m.name)
            if slot is not None:
                return slot
            need = self.estimate(m)
            if need > self.budget:
                raise APIError(507, f"model '{m.name}' needs about {need / 2**30:.2f} GiB (weights and KV "
                                    f"cache) and the server's --max-loaded-bytes is {self.budget / 2**30:.2f} GiB",
                               param="model")
            while self.used_bytes() + need > self.budget:
                idle = [s for s in self.slots.values() if s.leases == 0 and not s.pinned and not s.unloading]
                if not idle:
                    raise APIError(503, f"model '{m.name}' does not fit beside the loaded models, and every "
                                        "one of them is busy; retry shortly",
                                   headers={"Retry-After": str(self.state.settings.retry_after_s)})
                await self.unload(min(idle, key=lambda s: s.last_used).name)
            slot = ModelSlot(m.name, m.path, self.state.settings, size_bytes=need, keep_alive_s=self.keep_alive_s,
                             base_keep_alive_s=self.keep_alive_s)
            self.slots[m.name] = slot
            try:
                engine, measured = await asyncio.to_thread(self._build, m.path)
            except Exception as e:
                del self.slots[m.name]
                raise APIError(400, f"model '{m.name}' failed to load: {type(e).__name__}: {e}",
                               param="model") from e
            slot.configure(engine)
            slot.engine, slot.loaded_at = engine, time.time()
            slot.size_bytes = max(measured, 0) or need
            self.loads += 1
            w = engine.weights
            print(f"tokenmill: loaded {m.name} ({slot.size_bytes / 2**20:.0f} MiB): weights {w['summary']}; "
                  f"KV cache {w['kv_cache_dtype']}", flush=True)
            return slot

    def _build(self, path: str):
        import dataclasses
        from ..engine.async_engine import AsyncLLMEngine
        s = self.state.settings
        before = rss_bytes()
        config = dataclasses.replace(self.config, model=path, show_progress=False)
        engine = AsyncLLMEngine.from_config(config, s.max_queue, s.max_unread_tokens)
        return engine, rss_bytes() - before

    async def unload(self, name: str) -> bool:
        """Frees a model now (its requests, if any, are finished first: an unload asked for
        while requests run happens when the last one ends)."""
        slot = self.slots.get(canonical(name))
        if slot is None or slot.engine is None or slot.pinned or slot.unloading:
            return False
        if slot.leases > 0:
            slot.keep_alive_s, slot.expires_at = 0.0, None
            return False
        slot.unloading = True
        engine = slot.engine

        slot.engine = None
        await asyncio.to_thread(engine.shutdown)
        del engine
        await asyncio.to_thread(_trim_heap)  # its tensors are gone with the last reference
        if self.slots.get(slot.name) is slot:
            del self.slots[slot.name]
        self.unloads += 1
        print(f"tokenmill: unloaded {slot.name}", flush=True)
        return True

    async def reap(self, tick_s: float = 0.25) -> None:
        """Forever: unload models whose keep_alive has run out."""
        while True:
            await asyncio.sleep(tick_s)
            now = time.monotonic()
            for slot in list(self.slots.values()):
                if slot.leases == 0 and slot.expires_at is not None and slot.expires_at <= now:
                    await self.unload(slot.name)

    async def shutdown(self) -> None:
        for slot in list(self.slots.values()):
            if slot.engine is not None and hasattr(slot.engine, "shutdown"):
                await asyncio.to_thread(slot.engine.shutdown)


_UNSET = object()


async def use_model(request: Request, name: str | None, keep_alive=None, required: bool = True) -> Served:
    """The request's model, leased until its response ends (ModelLeases returns it)."""
    state = request.app.state.tm
    if not name:
        if required:
            raise APIError(400, "you must give a model name", param="model")
        name = state.default_model or next(iter(state.pool.names()), "")
    pool: ModelPool = state.pool
    asked = time.time()
    slot = await pool.acquire(name, keep_alive)
    if slot.loaded_at >= asked:  # this request waited for its model to load (Ollama's load_duration)
        request.state.load_duration = time.time() - asked
    leases = request.scope.setdefault("tm_leases", [])
    leases.append(slot)
    return Served(state, slot)


class ModelLeases:
    """ASGI middleware: returns a request's model leases once its response has ended (a
    stream's too: the app returns only after the last chunk, or when the client has gone)."""

    def __init__(self, app, pool_of):
        self.app, self.pool_of = app, pool_of

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope["tm_leases"] = []
        try:
            await self.app(scope, receive, send)
        finally:
            pool = self.pool_of()
            for slot in scope.get("tm_leases", []):
                pool.release(slot)
