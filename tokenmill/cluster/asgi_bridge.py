"""One HTTP request through an ASGI app in this process, without a socket: the replica runs
the tokenmill server app this way. The response comes back as a stream of messages:
("start", status, headers) first, then ("body", bytes) chunks. Closing the stream early (the
client left) tells the app that the client disconnected, so the engine aborts the request."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


async def call_asgi(app, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
                    body: bytes) -> AsyncIterator[tuple]:
    out: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    sent_body = False

    async def receive():
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if gone.is_set():
            raise OSError("the client has gone")
        await out.put(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}

    async def run():
        try:
            await app(scope, receive, send)
        finally:
            await out.put(None)

    task = asyncio.create_task(run())
    try:
        while True:
            message = await out.get()
            if message is None:
                break
            if message["type"] == "http.response.start":
                yield ("start", message["status"], [(k.decode("latin-1"), v.decode("latin-1"))
                                                    for k, v in message.get("headers", [])])
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield ("body", message["body"])
                if not message.get("more_body", False):
                    break
        await task
    finally:
        gone.set()  # the app sees http.disconnect and aborts what it was doing
        if not task.done():
            try:
                await asyncio.wait_for(task, timeout=5)
            except (asyncio.TimeoutError, Exception):
                task.cancel()
