"""Soak: 1,000 requests at 16 concurrent clients across the three protocols; 30% hang up
mid-stream, 10% send malformed bodies. Every accepted request is answered or cancelled by its
own client; the KV cache is empty afterwards; RSS grows < 5% after warm-up.
TOKENMILL_RELIABILITY_LONG=1: 10,000 requests on the bundled model."""
import asyncio
import time

from server_process import Server, rss_kb

from .conftest import LONG, server_args, tracebacks
from .load import run_load, summary

N = 10000 if LONG else 1000
WARMUP = N // 10


def test_soak(reliability_model, tmp_path):
    s = Server(server_args(reliability_model, max_queue=256), str(tmp_path / "soak.log"))
    try:
        rss = {}

        def progress(i):
            if i == WARMUP:
                rss["warm"] = rss_kb(s.proc.pid)

        t0 = time.time()
        outcomes = asyncio.run(run_load(s.url, N, 16, max_tokens=24, hangup_share=0.3, malformed_share=0.1,
                                        on_progress=progress))
        took = time.time() - t0
        counts = summary(outcomes)
        deadline = time.time() + 300
        while s.metric("tokenmill:kv_cache_usage_perc") != 0 or s.metric("tokenmill:num_requests_running") != 0:
            assert time.time() < deadline, "KV blocks still in use after the soak"
            time.sleep(0.05)
        rss["end"] = rss_kb(s.proc.pid)
        growth = rss["end"] / rss["warm"] - 1
        lost = {k: v for k, v in counts.items() if k.startswith("lost")}
        print(f"\nsoak: {N} requests in {took:.0f} s: {counts}; KV blocks in use after: 0; "
              f"RSS {rss['warm'] // 1024} MB after warm-up -> {rss['end'] // 1024} MB ({growth:+.1%})")
        assert lost == {}
        assert counts.get("cancelled", 0) >= N * 0.2 and counts.get("rejected_4xx", 0) >= N * 0.05
        assert counts.get("ok", 0) >= N * 0.5
        assert growth < 0.05
        assert tracebacks(s.log_path) == []
    finally:
        s.stop()
