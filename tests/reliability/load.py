"""Mixed traffic for the soak and overload tests: the three protocols, streaming or not, clients
that hang up mid-stream, malformed bodies. Each request reports one outcome."""
from __future__ import annotations

import asyncio
import json
import random

import httpx


def make_request(i: int, rng: random.Random, max_tokens: int, hangup_share: float, malformed_share: float):
    """(kind, path, body or raw bytes, stream) for request i."""
    r = rng.random()
    if r < malformed_share:
        bad = [b'{"model": "tiny", "messages": [', b"not json", b'{"model": "tiny", "messages": "x"}',
               b'{"inputs": 5}', b'{"model": "tiny", "prompt": "x", "max_tokens": -4}']
        path = rng.choice(["/v1/chat/completions", "/v1/completions", "/api/chat", "/generate"])
        return "malformed", path, rng.choice(bad), False
    hang = rng.random() < hangup_share / (1 - malformed_share)
    proto = i % 3
    stream = hang or rng.random() < 0.5
    msgs = [{"role": "user", "content": f"request {i}: " + "hello " * rng.randint(1, 3)}]
    if proto == 0:
        body = {"model": "tiny", "messages": msgs, "max_tokens": max_tokens, "stream": stream,
                "temperature": rng.choice([0, 0.8]), "seed": i}
        path = "/v1/chat/completions"
    elif proto == 1:
        body = {"model": "tiny", "messages": msgs, "stream": stream,
                "options": {"num_predict": max_tokens, "seed": i}}
        path = "/api/chat"
    else:
        body = {"inputs": msgs[0]["content"], "parameters": {"max_new_tokens": max_tokens}}
        path = "/generate_stream" if stream else "/generate"
    return ("hangup" if hang else "full"), path, body, stream


def _terminated(path: str, lines: list[str]) -> bool:
    if not lines:
        return False
    last = lines[-1]
    if path.startswith("/api/"):
        event = json.loads(last)
        return event.get("done") is True
    data = last[5:].strip()
    if data == "[DONE]":
        return True
    event = json.loads(data)
    return bool(event.get("details")) and "error" not in event


async def one(client: httpx.AsyncClient, url: str, kind, path, body, stream) -> str:
    """Outcome: ok, cancelled (the client hung up), rejected_4xx, busy_429, unavailable_503,
    or lost (anything else: a 5xx, a broken or unterminated answer)."""
    try:
        if kind == "malformed":
            r = await client.post(url + path, content=body, headers={"content-type": "application/json"})
            return "rejected_4xx" if 400 <= r.status_code < 500 else f"lost:{r.status_code}"
        if not stream:
            r = await client.post(url + path, json=body)
            if r.status_code == 200:
                return "ok"
            return {429: "busy_429", 503: "unavailable_503"}.get(r.status_code, f"lost:{r.status_code}")
        async with client.stream("POST", url + path, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                if r.status_code == 429 and not r.headers.get("retry-after"):
                    return "lost:429-without-retry-after"
                return {429: "busy_429", 503: "unavailable_503"}.get(r.status_code, f"lost:{r.status_code}")
            lines = []
            async for line in r.aiter_lines():
                if line.strip():
                    lines.append(line)
                if kind == "hangup" and len(lines) >= 2:
                    return "cancelled"  # leaving the block closes the connection mid-stream
            return "ok" if _terminated(path, lines) else "lost:unterminated"
    except httpx.HTTPError as e:
        return f"lost:{type(e).__name__}"


async def run_load(url: str, n: int, concurrency: int, max_tokens: int, hangup_share: float,
                   malformed_share: float, seed: int = 0, on_progress=None) -> list[str]:
    rng = random.Random(seed)
    plan = [make_request(i, rng, max_tokens, hangup_share, malformed_share) for i in range(n)]
    outcomes: list[str] = [""] * n
    next_i = 0
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600), limits=limits) as client:
        async def worker():
            nonlocal next_i
            while next_i < n:
                i = next_i
                next_i += 1
                outcomes[i] = await one(client, url, *plan[i])
                if on_progress:
                    on_progress(i)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def summary(outcomes: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in outcomes:
        out[o] = out.get(o, 0) + 1
    return out
