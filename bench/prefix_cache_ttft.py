"""Prefix caching, seen from a client: time to first token of a request whose ~1,000-token
system prompt is new, then of requests that share it.

    python bench/prefix_cache_ttft.py [--url URL]   (default: starts its own tokenmill serve)
"""
import argparse
import json
import socket
import subprocess
import sys
import time

import httpx

from tokenmill.benchmark.prompts import QUESTIONS, SHARED_SYSTEM


def ttft(client, url, model, messages):
    body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and '"content": "' in line and '"content": ""' not in line:
                return time.perf_counter() - t0
    raise RuntimeError("no token")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=None)
    args = ap.parse_args()
    proc = None
    url = args.url
    if url is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "tokenmill.cli", "serve", "--port", str(port),
                                 "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(url + "/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    try:
        with httpx.Client(timeout=120) as c:
            model = c.get(url + "/v1/models").json()["data"][0]["id"]
            n = c.post(url + "/tokenize", json={"messages": [{"role": "system", "content": SHARED_SYSTEM}]}).json()
            # warm-up on an unrelated prompt, so the first measured request is not paying for it
            ttft(c, url, model, [{"role": "user", "content": "hello"}])
            times = [ttft(c, url, model, [{"role": "system", "content": SHARED_SYSTEM},
                                          {"role": "user", "content": QUESTIONS[i]}]) for i in range(4)]
        print(f"shared system prompt: {n['count']} tokens")
        print(f"first request (cold prefix): TTFT {times[0] * 1000:7.1f} ms")
        for i, t in enumerate(times[1:], 2):
            print(f"request {i} (shared prefix):   TTFT {t * 1000:7.1f} ms  -> {times[0] / t:5.1f}x sooner")
        print(json.dumps({"prefix_tokens": n["count"], "ttft_s": times}))
    finally:
        if proc:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
