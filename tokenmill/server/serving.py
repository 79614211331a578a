"""The one request path that every protocol shares.

A protocol module is a codec: it parses its body into a GenerationRequest (prompt token ids,
SamplingParams with that protocol's own defaults, stream flag, options), calls submit(), and
encodes the RequestOutputs (or the APIError) back in its own shape. submit() holds what is the
same for all of them: engine state, context and n limits, admission (429 when the queue is
full), cancellation from the moment of admission when the client leaves, metrics, and engine
failures turned into errors.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from ..engine.async_engine import EngineClient, EngineDeadError, QueueFullError, SlowReaderError
from ..engine.engine import PromptTooLongError
from ..engine.outputs import RequestOutput
from ..model.loader.chat_template import ChatTemplateError
from ..sampling_params import SamplingParams
from .disconnect import until_disconnect
from ..api.errors import APIError

@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str | None = None
    max_queue: int | None = 256          # sequences waiting beyond this get 429 (each of n counts)
    max_n: int = 16                      # samples per request at most (n, best_of)
    max_body_bytes: int = 4 * 2**20      # larger request bodies get 413
    max_unread_tokens: int = 4096        # a stream whose client leaves more untaken is stopped (engine/mailbox.py)
    default_sampling: str | None = None  # "temperature=0.7,top_p=0.9": over the model's recommended sampling
    generation_config: str = "none"      # auto: the API routes use the recommended sampling for unset fields
    responses_store: str | None = None   # SQLite file of stored Responses (default: the user's data directory)
    embedding_pooling: str = "auto"      # auto (from the model's files) | mean | last | cls
    reasoning_parser: str = "auto"       # auto | think | none: split <think> reasoning out (server/reasoning.py)
    models: str | None = None            # the model store's directory (default: tokenmill/models in the user's data directory)
    keep_alive: str = "5m"               # a model stays loaded this long after its last request (0: unload; negative: keep)
    named_models: list[str] | None = None  # NAME=PATH: more models (serve --model NAME=PATH, repeatable)
    max_loaded_bytes: int | None = None  # loaded models' memory at most (default: 3/4 of the machine's)
    retry_after_s: int = 1
    drain_timeout_s: float = 30.0        # on SIGTERM: running requests get this long to finish
    dashboard_window_s: float = 60.0     # the dashboard's latency percentiles cover this long
    price_in: float = 0.0                # dollars per million prompt tokens (serve --price IN,OUT)
    price_out: float = 0.0               # dollars per million generated tokens


@dataclass
class ServerState:
    """The server's own state; each model's lives in its ModelSlot (server/model_pool.py), and a
    route reads both through use_model's view."""
    settings: ServerSettings
    metrics: "object"
    pool: "object" = None                # ModelPool: the store's models, loaded on demand
    default_model: str = "model"         # the model of routes that name none (and of /health)
    responses: "object" = None           # the ResponseStore, opened at the first Responses request
    explaining: int = 0                  # explain requests running (server/explain.py bounds them)
    started: float = field(default_factory=time.time)
    draining: bool = False               # SIGTERM received: new work gets 503
    exit_code: int = 0

    @property
    def default_slot(self):
        return self.pool.slots.get(self.default_model) if self.pool is not None else None

    @property
    def engine(self) -> "EngineClient | None":
        """The default model's engine, else any loaded one (dashboard, /tokenmill/info)."""
        slot = self.default_slot
        if slot is not None and slot.engine is not None:
            return slot.engine
        engines = self.pool.engines() if self.pool is not None else []
        return engines[0] if engines else None

    @property
    def model_name(self) -> str:
        return self.default_model

    @property
    def engine_error(self) -> str | None:
        for slot in list(self.pool.slots.values()) if self.pool is not None else []:
            if slot.engine_error:
                return f"{slot.name}: {slot.engine_error}"
        return None


@dataclass
class GenerationRequest:
    """What every protocol's body comes down to."""
    prompt_token_ids: list[int]
    params: SamplingParams
    stream: bool = False
    request_id: str | None = None
    cache_salt: str | None = None        # prefix-cache sharing only among requests with this salt


_WORKERS = None


async def off_loop(fn, *args):
    """fn(*args) in the server's worker threads, so that the event loop, which carries every
    stream and /health, never waits on it: chat-template rendering, tokenizing, building a
    large answer (n x logprobs), digests, schema checks. Pure Python still takes the GIL, but
    the loop gets it back every switch interval (5 ms) instead of after the whole job."""
    global _WORKERS
    if _WORKERS is None:
        from concurrent.futures import ThreadPoolExecutor
        _WORKERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokenmill-work")
    return await asyncio.get_running_loop().run_in_executor(_WORKERS, fn, *args)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def check_context(limit: int, num_prompt: int, max_tokens: int | None) -> None:
    if num_prompt >= limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, your "
                            f"prompt has {num_prompt} tokens.", param="messages")
    if max_tokens is not None and num_prompt + max_tokens > limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you "
                            f"requested {num_prompt + max_tokens} tokens ({num_prompt} in the prompt, "
                            f"{max_tokens} for the completion). Reduce the prompt or max_tokens.",
                       param="max_tokens")


def make_params(**kwargs) -> SamplingParams:
    """SamplingParams from a codec's fields; None means the engine default, except for
    max_tokens, where None means no limit (until EOS or the context is full)."""
    try:
        return SamplingParams(**{k: v for k, v in kwargs.items() if v is not None or k == "max_tokens"})
    except (ValueError, TypeError, OverflowError) as e:
        raise APIError(400, str(e)) from e


def chat_prompt_ids(engine, messages: list[dict], continue_final: bool = False,
                    add_generation_prompt: bool = True, template_kwargs: dict | None = None) -> list[int]:
    """Messages through the model's chat template (sandboxed, time- and size-limited). With
    continue_final the last message (an assistant's, cut short) is left open, so that the
    model goes on writing it: the rendered text ends right after that message's content.
    template_kwargs: variables for the template (chat_template_kwargs, enable_thinking)."""
    tok = engine.tokenizer
    kw = template_kwargs or {}
    try:
        if not continue_final:
            return tok.encode_chat(messages, add_generation_prompt, **kw)
        last = messages[-1].get("content") if messages else None
        if not isinstance(last, str) or not last or messages[-1].get("role") != "assistant":
            raise APIError(400, "continue_final_message needs a last assistant message with text",
                           param="continue_final_message")
        text = tok.apply_chat_template(messages, add_generation_prompt=False, **kw)
        end = text.rfind(last)
        if end < 0:
            raise APIError(400, "the chat template changed the last message; it cannot be continued",
                           param="continue_final_message")
        return tok.encode(text[:end + len(last)], add_special_tokens=False)
    except (ChatTemplateError, ValueError) as e:
        raise APIError(400, str(e), param="messages") from e


def _engine_error(e: BaseException, state: ServerState) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, QueueFullError):
        return APIError(429, str(e), headers={"Retry-After": str(state.settings.retry_after_s)})
    if isinstance(e, PromptTooLongError):
        return APIError(400, str(e), param="messages")
    if isinstance(e, EngineDeadError):
        return APIError(503, str(e))
    if isinstance(e, SlowReaderError):
        return APIError(408, str(e))
    if isinstance(e, ValueError):
        return APIError(400, str(e))
    return APIError(500, f"internal error: {type(e).__name__}: {e}")


async def submit(state: ServerState, request: Request | None, gen: GenerationRequest,
                 watch: bool = True) -> AsyncIterator[RequestOutput]:
    """Admit one request; returns its stream of outputs once the first has come. While it
    waits in the queue or prefills, a client that leaves cancels it (never prefilled, if it
    was still queued). watch=False: the caller watches the client itself (one watcher for
    many requests of one HTTP request)."""
    engine = state.get_engine()
    if state.draining:
        raise APIError(503, "the server is shutting down", headers={"Retry-After": "1"})
    p = gen.params
    if p.n > state.settings.max_n:
        raise APIError(400, f"n must be at most {state.settings.max_n} on this server", param="n")
    if state.settings.max_queue is not None and p.n > state.settings.max_queue:
        raise APIError(400, f"n ({p.n}) is larger than the queue ({state.settings.max_queue})", param="n")
    check_context(engine.max_model_len, len(gen.prompt_token_ids), p.max_tokens)
    salt = gen.cache_salt
    if request is not None:
        # the router names the tenant's salt, so that one tenant cannot time another's prompts
        tenant_salt = request.headers.get("x-tokenmill-cache-salt")
        if tenant_salt:
            salt = tenant_salt + (":" + salt if salt else "")
        # sent back as x-tokenmill-prompt-tokens (api/gate.py), for the router's ledger
        request.state.prompt_tokens = getattr(request.state, "prompt_tokens", 0) + len(gen.prompt_token_ids)
    stream = engine.generate(gen.prompt_token_ids, p, gen.request_id, salt)
    try:
        first = await (until_disconnect(request, anext(stream)) if request is not None and watch else anext(stream))
    except BaseException as e:
        await stream.aclose()  # aborts it in the engine (or it never gets there)
        if isinstance(e, asyncio.CancelledError) or (isinstance(e, APIError) and e.status == 499):
            state.metrics.observe_aborted(p.n, state.model_name)  # its client left while it waited or prefilled
        if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt, StopAsyncIteration)):
            raise
        raise _engine_error(e, state) from e
    return _with_metrics(state, first, stream)


async def _with_metrics(state, first, stream):
    out = first
    try:
        yield out
        async for out in stream:
            yield out
    except (EngineDeadError, QueueFullError, SlowReaderError, ValueError) as e:  # e.g. the engine died mid-stream
        raise _engine_error(e, state) from e
    finally:
        await stream.aclose()  # aborts the request if it did not finish
        if out.finished:
            state.metrics.observe_finished(out, state.model_name)
        else:
            state.metrics.observe_aborted(len(out.outputs), state.model_name)


async def final_output(request: Request, stream) -> RequestOutput:
    """The last output of a non-streaming request, or 499 if the client leaves first."""
    async def last():
        out = None
        async for out in stream:
            pass
        return out
    return await until_disconnect(request, last())
