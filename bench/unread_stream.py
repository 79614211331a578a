"""A client that reads nothing of its stream for a while: what the server's memory does and how
the stream ends. Starts `tokenmill serve` (bundled model unless --model), opens a streaming chat
with a 4 KB receive buffer, reads nothing for --wait-s seconds while sampling the server's RSS,
then reads everything and says how the stream ended.

    python bench/unread_stream.py [--wait-s 60] [--top-logprobs 20] [--max-unread-tokens 4096]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from server_process import Server, UnreadStream, rss_kb  # noqa: E402


def rss_mb(pid: int) -> float:
    return rss_kb(pid) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--wait-s", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=6000)
    ap.add_argument("--top-logprobs", type=int, default=20)
    ap.add_argument("--max-unread-tokens", type=int, default=4096)
    args = ap.parse_args()
    flags = ["--max-unread-tokens", str(args.max_unread_tokens)] + (["--model", args.model] if args.model else [])
    s = Server(flags, "/tmp/unread_stream.log")
    try:
        body = {"model": s.model, "messages": [{"role": "user", "content": "Tell me a very long story."}],
                "max_tokens": args.max_tokens, "stream": True, "temperature": 0, "ignore_eos": True}
        if args.top_logprobs:
            body.update(logprobs=True, top_logprobs=args.top_logprobs)
        before = rss_mb(s.proc.pid)
        stream = UnreadStream(s.url, "/v1/chat/completions", body)
        t0 = time.time()
        peak = before
        while time.time() - t0 < args.wait_s:
            time.sleep(5)
            now = rss_mb(s.proc.pid)
            peak = max(peak, now)
            print(f"{time.time() - t0:5.0f} s  RSS {now:7.1f} MB (+{now - before:.1f})  generated "
                  f"{s.metric('tokenmill:generation_tokens_total'):.0f}  running "
                  f"{s.metric('tokenmill:num_requests_running'):.0f}", flush=True)
        text = stream.read_all()
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        got = sum(len((e["choices"][0].get("logprobs") or {}).get("content") or []) or
                  bool(e["choices"][0]["delta"].get("content")) for e in events if e.get("choices"))
        end = events[-1] if events else {}
        how = f"error: {end['error']['message']}" if "error" in end else \
            f"finish_reason {end['choices'][0]['finish_reason']}" if end.get("choices") else "?"
        print(f"RSS before {before:.1f} MB, peak while unread +{peak - before:.1f} MB; the client then read "
              f"{got} tokens; the stream ended with {how}")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
