"""The gate in front of the server's and the router's routes: a pure ASGI middleware (streams
and disconnects pass straight through) that, before a byte of the body is read,

- checks the API key and puts the tenant's name in `request.state.tenant`,
- refuses new work with 503 while the process drains,
- refuses a body over the size limit with 413 (by Content-Length, else while reading it),

then reads the bounded body and replays it to the app. A generation route's answer carries
the prompt's token count (`x-tokenmill-prompt-tokens`), which the router bills. Ollama bodies are JSON whatever their
content type (curl -d sends a form type), so /api/ requests are handed on as JSON.
Refusals are written in the protocol of the path (api/errors.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from .auth import given_api_key
from .errors import error_body


@dataclass
class GateRules:
    tenant: Callable[[str], str | None]         # given key -> tenant name, None: refused
    is_open: Callable[[str, str], bool]         # (method, path) that need no key
    max_body_bytes: int
    draining: Callable[[], bool] = lambda: False
    while_draining: frozenset = frozenset()    # paths still answered while draining
    count: Callable[[int], None] = lambda status: None  # every response's status (metrics)


class Gate:
    def __init__(self, app, rules: GateRules):
        self.app, self.rules = app, rules

    async def _reply(self, send, path, status, message, headers=None):
        body = json.dumps(error_body(path, status, message)).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self.rules.count(status)
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rules, path, method = self.rules, scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        tenant = "anonymous"
        if not rules.is_open(method, path):
            tenant = rules.tenant(given_api_key(headers))
            if tenant is None:
                return await self._reply(send, path, 401, "invalid or missing API key",
                                         {"WWW-Authenticate": "Bearer"})
        scope.setdefault("state", {})["tenant"] = tenant
        if rules.draining() and path not in rules.while_draining:
            return await self._reply(send, path, 503, "the server is shutting down", {"Retry-After": "1"})
        limit = rules.max_body_bytes
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return await self._reply(send, path, 413, f"request body is larger than {limit} bytes")
        inner_receive = receive
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return await self._reply(send, path, 413, f"request body is larger than {limit} bytes")
                chunks.append(chunk)
                more = message.get("more_body", False)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                return await receive()
            inner_receive = replay
            if path.startswith("/api/"):
                scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
                             + [(b"content-type", b"application/json")])

        async def counting_send(message):
            if message["type"] == "http.response.start":
                rules.count(message["status"])
                prompt_tokens = scope["state"].get("prompt_tokens")
                if prompt_tokens is not None:  # set by a generation route: for the router's ledger
                    message = dict(message, headers=list(message.get("headers", []))
                                   + [(b"x-tokenmill-prompt-tokens", str(prompt_tokens).encode())])
            await send(message)

        await self.app(scope, inner_receive, counting_send)
