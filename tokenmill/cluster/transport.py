"""An httpx transport that delivers the router's upstream requests to the engine deployment
through its Serve DeploymentHandle instead of a socket, so that the router (API keys, rate
limits, response cache, hybrid routes, ledger, metrics, dashboard) runs unchanged as the Ray
ingress. Requests to any other URL (a hybrid route's large upstream) go out over HTTP.

A non-streaming call, or a stream that has not produced its first message, is retried when
its replica died (Serve itself does not retry); closing a streamed response cancels the
replica's request."""
import asyncio
import json

import httpx
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from ..api.errors import is_streaming
from ..api.affinity import PREFIX_CHARS, affinity_key

ENGINE_URL = "http://tokenmill-engine"


def engine_url(i: int) -> str:
    """The router's URL for the i-th model's engine deployment (a host of its own: httpx
    mounts a transport per host)."""
    return ENGINE_URL if i == 0 else f"{ENGINE_URL}-{i}"
_DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)


async def _within(awaitable, timeout: float, what: str, cancel):
    """The awaitable's result, or httpx.ReadTimeout (and the call cancelled) after timeout s."""
    try:
        return await asyncio.wait_for(_awaited(awaitable), timeout)
    except asyncio.TimeoutError:
        cancel()
        raise httpx.ReadTimeout(f"the engine replica did not answer {what} in {timeout:.0f} s") from None


async def _awaited(awaitable):
    return await awaitable


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, gen, timeout: float):
        self.gen, self.timeout = gen, timeout

    async def __aiter__(self):
        while True:
            try:
                message = await _within(self.gen.__anext__(), self.timeout, "the next chunk", self.gen.cancel)
            except StopAsyncIteration:
                return
            yield message[1]

    async def aclose(self):
        self.gen.cancel()


class ServeTransport(httpx.AsyncBaseTransport):
    def __init__(self, handle, max_retries: int = 2, affinity_chars: int = PREFIX_CHARS):
        self.handle, self.max_retries, self.affinity_chars = handle, max_retries, affinity_chars

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        path = request.url.path
        call = (request.method, path, request.url.query, [(k.lower(), v) for k, v in request.headers.raw], body)
        affinity = affinity_key(parsed, self.affinity_chars)
        streaming = request.method == "POST" and isinstance(parsed, dict) and is_streaming(path, parsed)
        # the router's httpx read timeout bounds every wait on a replica, as on a socket
        timeout = (request.extensions.get("timeout") or {}).get("read") or 600.0
        for attempt in range(self.max_retries + 1):
            try:
                if not streaming:
                    response = self.handle.call.remote(*call, affinity=affinity)
                    status, headers, content = await _within(response, timeout, "a request", response.cancel)
                    return httpx.Response(status, headers=_plain(headers), content=content)
                gen = self.handle.options(stream=True).stream.remote(*call, affinity=affinity)
                try:
                    start = await _within(gen.__anext__(), timeout, "the first chunk", gen.cancel)
                except BaseException:
                    gen.cancel()
                    raise
                return httpx.Response(start[1], headers=_plain(start[2]), stream=_Chunks(gen, timeout))
            except _DEAD as e:
                if attempt == self.max_retries:
                    raise httpx.ConnectError(f"the engine replica failed: {type(e).__name__}") from e
                await asyncio.sleep(0.2 * (attempt + 1))


def _plain(pairs) -> list:
    return [(k, v) for k, v in pairs if k.lower() not in ("content-length", "transfer-encoding", "connection")]
