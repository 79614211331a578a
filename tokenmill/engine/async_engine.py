"""AsyncLLMEngine: the engine stepping in a background thread, served to asyncio code.

    generate(prompt_token_ids, params) -> async iterator of RequestOutput

This is the one interface the server uses (EngineClient); it holds no HTTP. Adds and aborts
are queued as commands that the engine thread applies between steps, so the event loop never
waits for a forward pass. Outputs go back through one mailbox per request (mailbox.py), which
holds at most one output: what a slow reader has not taken yet is merged into the newest, and
a reader that leaves more than `max_unread_tokens` untaken is cut off (its request aborted,
an error in its stream). Leaving the iterator early (client gone, task cancelled) aborts the
request and frees its KV blocks.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

from ..config import EngineConfig
from ..sampling_params import SamplingParams
from .engine import LLMEngine
from .mailbox import Mailbox, SlowReaderError  # noqa: F401  (SlowReaderError: for the server)
from .outputs import RequestOutput
from .stats import EngineStats


class QueueFullError(RuntimeError):
    pass


class EngineDeadError(RuntimeError):
    pass


class EngineClient(Protocol):
    """What the server uses of an engine, in-process (AsyncLLMEngine) or remote: every member
    the server/ package reads is listed here, and nothing else of the engine is reached."""
    # the model, as the protocols report it (/v1/models, Ollama /api/tags and /api/show, TGI /info)
    model_name: str
    model_path: str
    model_config: "object"       # model/config.py ModelConfig: architecture, vocab_size, ...
    max_model_len: int
    num_parameters: int
    file_size: int
    quantization: str
    weights: dict                # how the weights run (/tokenmill/info)
    dtype: "object"
    device_type: str
    tokenizer: "object"          # model/loader/tokenizer.py: encode, encode_chat, decode, piece
    structured: "object"         # engine/structured.py GrammarCompiler

    @property
    def digest(self) -> str: ...  # sha256 of the model file(s); the first call reads them

    def generate(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str | None = None,
                 cache_salt: str | None = None) -> AsyncIterator[RequestOutput]: ...
    def get_stats(self) -> EngineStats: ...
    def has_work(self) -> bool: ...  # requests with a waiting client (draining waits on it)
    def fail_all(self, error: BaseException) -> None: ...  # every waiting client gets `error`
    def shutdown(self) -> None: ...


def _size_of(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


MAX_UNREAD_TOKENS = 4096  # per request, summed over its n samples; the server's --max-unread-tokens


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine, max_queue: int | None = None,
                 max_unread_tokens: int = MAX_UNREAD_TOKENS):
        self.engine = engine
        self.max_unread_tokens = max_unread_tokens
        self.tokenizer = engine.tokenizer
        self.structured = engine.structured  # grammar compiler (structured output)
        self.model_config = engine.model_config
        self.model_name = engine.model_name
        self.max_model_len = engine.max_model_len
        self.max_queue = max_queue
        # facts about the model that the protocols report (Ollama /api/tags, TGI /info)
        self.model_path = engine.model_path
        self.quantization = engine.quantization
        self.weights = engine.weights  # how the weights run (engine.py)
        self.num_parameters = engine.model_config.num_parameters
        self.dtype = engine.runner.dtype
        self.device_type = engine.runner.device.type
        self.file_size = _size_of(engine.model_path)
        self._digest: str | None = None
        self._commands: deque = deque()
        self._wake = threading.Event()
        self._queues: dict[str, Mailbox] = {}
        self._pending_adds = 0
        self._ids = itertools.count()
        self._stop = False
        self.dead: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tokenmill-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: EngineConfig, max_queue: int | None = None,
                    max_unread_tokens: int = MAX_UNREAD_TOKENS) -> "AsyncLLMEngine":
        return cls(LLMEngine(config), max_queue, max_unread_tokens)

    # ---- engine thread -----------------------------------------------------------------
    def _run(self):
        try:
            while not self._stop:
                self._apply_commands()
                if not self.engine.has_unfinished_requests():
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                for out in self.engine.step():
                    self._deliver(out.request_id, out)
        except BaseException as e:  # a dead engine must not leave clients waiting forever
            traceback.print_exc()
            self.dead = e  # first: generate() checks it after registering its queue
            self.fail_all(EngineDeadError(f"engine failed: {type(e).__name__}: {e}"))

    def fail_all(self, error: BaseException) -> None:
        """Every request with a waiting client gets `error` (engine death, or shutdown after
        the grace period); the engine thread aborts them."""
        for rid in list(self._queues):
            self._deliver(rid, error)
            if self.dead is None:
                self._command("abort", rid)

    def _apply_commands(self):
        while self._commands:
            kind, *args = self._commands.popleft()
            if kind == "add":
                rid, ids, params, arrival, salt = args
                self._pending_adds -= params.n
                if rid not in self._queues:
                    continue  # its client left before the engine saw it: never prefilled
                try:
                    self.engine.add_request(rid, prompt_token_ids=ids, params=params, arrival_time=arrival,
                                            cache_salt=salt)
                except Exception as e:  # validated before, but never lose a request silently
                    self._deliver(rid, e)
            else:
                self.engine.abort_request(args[0])

    def _deliver(self, rid: str, item):
        box = self._queues.get(rid)
        if box is not None:
            box.loop.call_soon_threadsafe(box.put, item)

    def _command(self, *cmd):
        self._commands.append(cmd)
        self._wake.set()

    # ---- client side (event loop) ------------------------------------------------------
    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.engine.validate(prompt_token_ids, params)

    def num_waiting(self) -> int:
        """Sequences waiting for a place (each of a request's n samples counts)."""
        return len(self.engine.scheduler.waiting) + self._pending_adds

    def has_work(self) -> bool:
        return bool(self._queues) or self._pending_adds > 0

    async def generate(self, prompt_token_ids: list[int], params: SamplingParams,
                       request_id: str | None = None, cache_salt: str | None = None
                       ) -> AsyncIterator[RequestOutput]:
        if self.dead is not None:
            raise EngineDeadError(f"engine failed: {self.dead}")
        self.validate(prompt_token_ids, params)
        if self.max_queue is not None and self.num_waiting() + params.n > self.max_queue:
            raise QueueFullError(f"the queue is full ({self.max_queue} sequences waiting); retry later")
        rid = request_id or f"req-{next(self._ids)}"
        box = Mailbox(asyncio.get_running_loop(), self.max_unread_tokens, lambda: self._command("abort", rid))
        self._queues[rid] = box
        if self.dead is not None:  # died between the first check and the registration
            self._queues.pop(rid, None)
            raise EngineDeadError(f"engine failed: {self.dead}")
        self._pending_adds += params.n
        self._command("add", rid, list(prompt_token_ids), params, time.time(), cache_salt)
        finished = False
        try:
            while True:
                item = await box.get()
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._queues.pop(rid, None)
            if not finished:
                self._command("abort", rid)

    async def abort(self, request_id: str) -> None:
        self._command("abort", request_id)

    def get_stats(self) -> EngineStats:
        return self.engine.get_stats()

    @property
    def digest(self) -> str:
        if self._digest is None:
            h = hashlib.sha256()
            files = [self.model_path] if os.path.isfile(self.model_path) else sorted(
                os.path.join(self.model_path, f) for f in os.listdir(self.model_path))
            for fn in files:
                with open(fn, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
            self._digest = "sha256:" + h.hexdigest()
        return self._digest

    def shutdown(self):
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5)
