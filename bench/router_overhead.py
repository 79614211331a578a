"""Router benchmark: latency the router adds per request, and whether `serve --replicas 2`
beats one server on this machine.

    python bench/router_overhead.py [--requests 40] [--concurrency 16]

1. One tokenmill server (bundled model) and a router in front of it (cache off): the same
   sequential non-streaming requests (8 output tokens) go direct and through the router,
   interleaved; prints latency p50/p95 of each and the difference.
2. `tokenmill bench serve` at --concurrency against one `tokenmill serve` and against
   `tokenmill serve --replicas 2`, one after the other.
"""
import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from tokenmill.benchmark.serve import print_table, run


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, ready_backends=None):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tokenmill.cli", *args, "--port", str(port),
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 180:
        try:
            r = httpx.get(url + "/health", timeout=1)
            if r.status_code == 200 and (ready_backends is None or
                                         r.json().get("healthy_backends", {}).get("default") == ready_backends):
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{args} did not come up")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--output-len", type=int, default=128)
    args = ap.parse_args()
    ledger = os.path.join(tempfile.mkdtemp(), "ledger.sqlite")

    server, surl = start(["serve"])
    router, rurl = start(["router", "--backend", surl, "--no-cache", "--ledger", ledger])
    try:
        model = httpx.get(surl + "/v1/models").json()["data"][0]["id"]
        body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
                "temperature": 0, "ignore_eos": True}
        lat = {"direct": [], "router": []}
        with httpx.Client(timeout=60) as c:
            for url in (surl, rurl):  # warm-up
                c.post(url + "/v1/chat/completions", json=body)
            for i in range(args.requests):
                for name, url in (("direct", surl), ("router", rurl)):
                    t0 = time.perf_counter()
                    r = c.post(url + "/v1/chat/completions", json=body)
                    assert r.status_code == 200, r.text
                    lat[name].append(time.perf_counter() - t0)
        print(f"router overhead, {args.requests} sequential requests of 8 tokens each way")
        for name in lat:
            print(f"  {name:<7} p50 {1000 * pct(lat[name], 0.5):7.1f} ms   p95 {1000 * pct(lat[name], 0.95):7.1f} ms"
                  f"   mean {1000 * statistics.mean(lat[name]):7.1f} ms")
        added = [r - d for r, d in zip(lat["router"], lat["direct"])]
        print(f"  added   p50 {1000 * pct(added, 0.5):7.1f} ms   p95 {1000 * pct(added, 0.95):7.1f} ms")
    finally:
        router.terminate()
        server.terminate()
        router.wait()
        server.wait()

    results = []
    for label, cmd, n in (("serve (1 process)", ["serve"], None),
                          ("serve --replicas 2", ["serve", "--replicas", "2", "--no-cache", "--ledger", ledger], 2)):
        proc, url = start(cmd, n)
        try:
            r = asyncio.run(run(url, args.concurrency, 2 * args.concurrency, "mixed", args.output_len))
            results.append(r)
            print_table([r], f"\n{label}")
        finally:
            proc.terminate()
            proc.wait()
    print(f"\nreplicas 2 / single: {results[1].output_tok_per_s / results[0].output_tok_per_s:.2f}x output tok/s")


if __name__ == "__main__":
    main()
