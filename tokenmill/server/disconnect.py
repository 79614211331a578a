"""Noticing that an HTTP client has gone while we wait for something on its behalf.
Shared by the server (engine requests) and the router (upstream requests); no engine here."""
from __future__ import annotations

import asyncio

from fastapi import Request

from ..api.errors import APIError


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
