"""What every protocol route shares: the engine client, model-name checks, limits, metrics
and cancellation when the client goes away."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request

from ..engine.async_engine import EngineDeadError, QueueFullError
from ..engine.engine import PromptTooLongError
from ..engine.outputs import RequestOutput
from ..sampling_params import SamplingParams
from .errors import APIError


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str | None = None
    max_queue: int | None = 256          # waiting requests beyond this get 429
    max_body_bytes: int = 4 * 2**20      # larger request bodies get 413
    retry_after_s: int = 1


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: "object"
    engine: "object | None" = None       # an EngineClient once the model has loaded
    load_error: str | None = None
    started: float = field(default_factory=time.time)
    model_name: str = "model"

    def get_engine(self):
        if self.engine is None:
            if self.load_error:
                raise APIError(503, f"the model failed to load: {self.load_error}")
            raise APIError(503, "the model is still loading; retry shortly", headers={"Retry-After": "1"})
        return self.engine

    def model_names(self) -> set[str]:
        return {self.model_name, f"{self.model_name}:latest"}

    def check_model(self, name: str | None, required: bool = True) -> None:
        if name is None or name == "":
            if required:
                raise APIError(400, "you must give a model name", param="model")
            return
        if name not in self.model_names():
            raise APIError(404, f"The model `{name}` does not exist. This server serves "
                                f"`{self.model_name}`.", param="model", code="model_not_found")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def check_context(engine, num_prompt: int, max_tokens: int | None) -> None:
    limit = engine.max_model_len
    if num_prompt >= limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, your "
                            f"prompt has {num_prompt} tokens.", param="messages")
    if max_tokens is not None and num_prompt + max_tokens > limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you "
                            f"requested {num_prompt + max_tokens} tokens ({num_prompt} in the prompt, "
                            f"{max_tokens} for the completion). Reduce the prompt or max_tokens.",
                       param="max_tokens")


def make_params(**kwargs) -> SamplingParams:
    try:
        return SamplingParams(**{k: v for k, v in kwargs.items() if v is not None})
    except ValueError as e:
        raise APIError(400, str(e)) from e


async def generate(state: ServerState, prompt_ids: list[int], params: SamplingParams,
                   request_id: str | None = None) -> AsyncIterator[RequestOutput]:
    """Engine outputs for one request, with clear errors and finished-request metrics."""
    engine = state.get_engine()
    check_context(engine, len(prompt_ids), params.max_tokens)
    try:
        stream = engine.generate(prompt_ids, params, request_id)
        first = await anext(stream)
    except QueueFullError as e:
        raise APIError(429, str(e), headers={"Retry-After": str(state.settings.retry_after_s)}) from e
    except PromptTooLongError as e:
        raise APIError(400, str(e), param="messages") from e
    except EngineDeadError as e:
        raise APIError(503, str(e)) from e
    except ValueError as e:
        raise APIError(400, str(e)) from e
    return _with_metrics(state, first, stream)


async def _with_metrics(state, first, stream):
    out = first
    try:
        yield out
        async for out in stream:
            yield out
    finally:
        await stream.aclose()  # aborts the request if it did not finish
        if out.finished:
            state.metrics.observe_finished(out)
        else:
            state.metrics.observe_aborted(len(out.outputs))


async def final_output(request: Request, stream) -> RequestOutput:
    """The last output of a non-streaming request, or 499 if the client leaves first."""
    async def last():
        out = None
        async for out in stream:
            pass
        return out
    return await until_disconnect(request, last())


async def until_disconnect(request: Request, coro):
    """Await coro, but cancel it (which aborts its engine request) if the client disconnects
    first. Starlette's StreamingResponse does the same for streams by itself."""
    task = asyncio.ensure_future(coro)

    async def watch():
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    raise APIError(499, "client disconnected")
