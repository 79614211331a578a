"""Embedding throughput: the same texts as one batched /v1/embeddings request and as one
request each (sequential), and the batch again while chat streams run beside it. Starts
`tokenmill serve` (bundled model unless --model) and prints texts per second for each.

    python bench/embeddings.py [--texts 64] [--words 40] [--streams 4]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import random
import sys
import tempfile
import time

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from server_process import Server  # noqa: E402

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge "
         "boxing matches near the old harbour at dawn").split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--words", type=int, default=40)
    ap.add_argument("--streams", type=int, default=4)
    a = ap.parse_args()
    # no two texts share a prefix: mean pooling needs every position computed (no prefix-cache hits)
    texts = [f"#{i} " + " ".join(random.Random(i).choice(WORDS) for _ in range(a.words)) for i in range(a.texts)]
    log = os.path.join(tempfile.mkdtemp(), "embeddings-bench.log")
    s = Server(["--model", a.model] if a.model else [], log)
    try:
        url = s.url + "/v1/embeddings"
        httpx.post(url, json={"model": s.model, "input": texts[:2]}, timeout=600)  # warm-up
        t = time.perf_counter()
        r = httpx.post(url, json={"model": s.model, "input": texts}, timeout=600).json()
        batch = time.perf_counter() - t
        tokens = r["usage"]["prompt_tokens"]
        t = time.perf_counter()
        for x in texts:
            httpx.post(url, json={"model": s.model, "input": x}, timeout=600).raise_for_status()
        single = time.perf_counter() - t

        def chat():
            with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=600, json={
                    "model": s.model, "messages": [{"role": "user", "content": "Tell a long story."}],
                    "max_tokens": 200, "temperature": 0, "stream": True}) as resp:
                for _ in resp.iter_lines():
                    pass
        with cf.ThreadPoolExecutor(a.streams) as pool:
            chats = [pool.submit(chat) for _ in range(a.streams)]
            time.sleep(0.5)  # the streams are decoding
            t = time.perf_counter()
            httpx.post(url, json={"model": s.model, "input": texts}, timeout=600).raise_for_status()
            beside = time.perf_counter() - t
            for c in chats:
                c.result()
        print(f"{a.texts} texts, {tokens} tokens ({s.model}):")
        print(f"  one batched request     {batch:6.2f} s  {a.texts / batch:7.1f} texts/s  {tokens / batch:8.0f} tok/s")
        print(f"  one request per text   {single:6.2f} s  {a.texts / single:7.1f} texts/s  {tokens / single:8.0f} tok/s")
        print(f"  batched, {a.streams} chats streaming {beside:6.2f} s  {a.texts / beside:7.1f} texts/s")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
