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

from ..router.streams import is_streaming
from .affinity import affinity_key

ENGINE_URL = "http://tokenmill-engine"
_DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, gen):
        self.gen = gen

    async def __aiter__(self):
        async for message in self.gen:
            yield message[1]

    async def aclose(self):
        self.gen.cancel()


class ServeTransport(httpx.AsyncBaseTransport):
    def __init__(self, handle, max_retries: int = 2, affinity_chars: int = 256):
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
        for attempt in range(self.max_retries + 1):
            try:
                if not streaming:
                    status, headers, content = await self.handle.call.remote(*call, affinity=affinity)
                    return httpx.Response(status, headers=_plain(headers), content=content)
                gen = self.handle.options(stream=True).stream.remote(*call, affinity=affinity)
                try:
                    start = await gen.__anext__()
                except BaseException:
                    gen.cancel()
                    raise
                return httpx.Response(start[1], headers=_plain(start[2]), stream=_Chunks(gen))
            except _DEAD as e:
                if attempt == self.max_retries:
                    raise httpx.ConnectError(f"the engine replica failed: {type(e).__name__}") from e
                await asyncio.sleep(0.2 * (attempt + 1))


def _plain(pairs) -> list:
    return [(k, v) for k, v in pairs if k.lower() not in ("content-length", "transfer-encoding", "connection")]
