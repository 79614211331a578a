"""`tokenmill bench serve`: N concurrent streaming clients against any OpenAI-compatible URL.

Each client sends chat requests from a fixed prompt set with temperature 0 and a forced output
length (max_tokens + ignore_eos; the grounded set ends where the model ends, max_tokens at
most), reads the SSE stream, and records time to first token, inter-token latencies and
end-to-end latency. Prints a table and JSON.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass

import httpx

from .prompts import prompt_set


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list | None = None
    output_tokens: int = 0
    error: str = ""


@dataclass
class BenchResult:
    url: str
    prompt_set: str
    concurrency: int
    num_requests: int
    num_failed: int
    output_len: int
    duration_s: float
    output_tok_per_s: float
    requests_per_s: float
    ttft_p50: float
    ttft_p95: float
    itl_p50: float
    itl_p95: float
    e2e_p50: float
    e2e_p95: float


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def _one(client: httpx.AsyncClient, url: str, model: str, messages, output_len: int,
               headers: dict, forced: bool = True, extra: dict | None = None) -> RequestResult:
    body = {"model": model, "messages": messages, "max_tokens": output_len, "temperature": 0,
            "ignore_eos": forced, "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}
    t0 = time.perf_counter()
    first = None
    last = None
    itl = []
    pieces = 0
    usage = None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                return RequestResult(False, error=f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("usage"):
                    usage = event["usage"]
                for ch in event.get("choices") or []:
                    if (ch.get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        if first is None:
                            first = now
                        else:
                            itl.append(now - last)
                        last = now
                        pieces += 1
    except httpx.HTTPError as e:
        return RequestResult(False, error=f"{type(e).__name__}: {e}")
    end = time.perf_counter()
    n = usage["completion_tokens"] if usage else pieces
    return RequestResult(True, ttft=(first or end) - t0, e2e=end - t0, itl=itl, output_tokens=n)


async def run(url: str, concurrency: int, num_requests: int, set_name: str, output_len: int,
              model: str | None = None, api_key: str | None = None, timeout: float = 600,
              extra: dict | None = None, forced: bool | None = None) -> BenchResult:
    """forced: answers of exactly output_len tokens (ignore_eos); default all sets but grounded."""
    forced = set_name != "grounded" if forced is None else forced
    url = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        if model is None:
            r = await client.get(url + "/v1/models", headers=headers)
            model = r.json()["data"][0]["id"]
        prompts = prompt_set(set_name, num_requests)
        queue: asyncio.Queue = asyncio.Queue()
        for p in prompts:
            queue.put_nowait(p)
        results: list[RequestResult] = []

        async def worker():
            while not queue.empty():
                messages = queue.get_nowait()
                results.append(await _one(client, url, model, messages, output_len, headers,
                                          forced=forced, extra=extra))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        dt = time.perf_counter() - t0
    ok = [r for r in results if r.ok]
    itl = [x for r in ok for x in (r.itl or [])]
    return BenchResult(
        url=url, prompt_set=set_name, concurrency=concurrency, num_requests=len(results),
        num_failed=len(results) - len(ok), output_len=output_len, duration_s=round(dt, 3),
        output_tok_per_s=round(sum(r.output_tokens for r in ok) / dt, 2),
        requests_per_s=round(len(ok) / dt, 3),
        ttft_p50=round(_pct([r.ttft for r in ok], 0.5), 4), ttft_p95=round(_pct([r.ttft for r in ok], 0.95), 4),
        itl_p50=round(_pct(itl, 0.5), 4), itl_p95=round(_pct(itl, 0.95), 4),
        e2e_p50=round(_pct([r.e2e for r in ok], 0.5), 4), e2e_p95=round(_pct([r.e2e for r in ok], 0.95), 4))


def print_table(results: list[BenchResult], title: str = "") -> None:
    if title:
        print(title)
    print(f"{'set':<7} {'conc':>4} {'reqs':>5} {'fail':>4} {'out tok/s':>10} {'req/s':>7} "
          f"{'TTFT p50':>9} {'p95':>7} {'ITL p50':>8} {'p95':>7} {'E2E p50':>8} {'p95':>7}")
    for r in results:
        print(f"{r.prompt_set:<7} {r.concurrency:>4} {r.num_requests:>5} {r.num_failed:>4} "
              f"{r.output_tok_per_s:>10.1f} {r.requests_per_s:>7.2f} {r.ttft_p50:>9.3f} {r.ttft_p95:>7.3f} "
              f"{r.itl_p50 * 1000:>6.1f}ms {r.itl_p95 * 1000:>5.1f}ms {r.e2e_p50:>8.2f} {r.e2e_p95:>7.2f}")


def main(args) -> int:
    results = []
    for c in args.concurrency:
        for s in args.prompt_set:
            n = args.num_requests or max(c * 2, 8)
            results.append(asyncio.run(run(args.url, c, n, s, args.output_len, args.model, args.bench_api_key)))
    print_table(results, f"tokenmill bench serve: {args.url}, output {args.output_len} tokens per request")
    out = json.dumps([asdict(r) for r in results], indent=None)
    print(out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(out)
    return 0 if all(r.num_failed == 0 for r in results) else 1


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="load-test an OpenAI-compatible server with streaming clients")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="default: the first of /v1/models")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--num-requests", type=int, default=None, help="per run; default 2 x concurrency (>= 8)")
    p.add_argument("--prompt-set", nargs="+", default=["mixed"], choices=["short", "long", "shared", "mixed", "grounded"])
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--api-key", dest="bench_api_key", default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    p.set_defaults(func=main)
