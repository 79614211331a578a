"""Nothing slow runs on the server's event loop: while 16 streams, an 8k-token prompt, an
n=16 x top_logprobs=20 request and a first /api/tags (the model file's digest) run together,
a 10 ms timer on the loop (tokenmill:event_loop_lag_seconds) fires late by less than 50 ms
in 99% of its ticks."""
import asyncio

import httpx
import pytest

from server_process import Server

LAG = "tokenmill:event_loop_lag_seconds"


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    from tiny_models import make_hf_model, save_hf_dir
    return save_hf_dir(make_hf_model("llama", seed=9, max_position_embeddings=16384),
                       str(tmp_path_factory.mktemp("tiny-long")))


def lag_counts(s) -> tuple[float, float]:
    """(ticks in all, ticks at most 50 ms late)."""
    return s.metric(LAG + "_count"), s.metric(LAG + "_bucket", label='le="0.05"')


def test_loop_lag_under_the_heaviest_requests(long_model, tmp_path):
    s = Server(["--model", long_model, "--served-model-name", "tiny", "--kv-cache-memory-gib", "0.1",
                "--max-model-len", "9000"], str(tmp_path / "lag.log"))
    try:
        total0, ok0 = lag_counts(s)

        async def load():
            async with httpx.AsyncClient(base_url=s.url, timeout=600) as c:
                async def stream(i):
                    async with c.stream("POST", "/v1/chat/completions", json={
                            "model": "tiny", "messages": [{"role": "user", "content": f"story {i}"}],
                            "max_tokens": 64, "stream": True}) as r:
                        assert r.status_code == 200
                        async for _ in r.aiter_lines():
                            pass
                jobs = [stream(i) for i in range(16)]
                jobs.append(c.post("/v1/completions", json={"model": "tiny", "prompt": "word " * 1600,
                                                            "max_tokens": 8}))  # 8,000 byte tokens
                jobs.append(c.post("/v1/chat/completions", json={
                    "model": "tiny", "messages": [{"role": "user", "content": "many"}], "n": 16,
                    "logprobs": True, "top_logprobs": 20, "max_tokens": 64}))
                jobs.append(c.get("/api/tags"))
                results = await asyncio.gather(*jobs)
                assert all(r is None or r.status_code == 200 for r in results)
        asyncio.run(load())
        total, ok = lag_counts(s)
        ticks, late = total - total0, (total - total0) - (ok - ok0)
        assert ticks > 50
        # p99 of ~100 ticks is their maximum: one tick delayed by the OS on a shared 2-core machine
        # (seen on a Zen 5, 1 of 85) is allowed, work on the loop makes many late
        assert late <= max(1, 0.01 * ticks), f"{late} of {ticks} ticks were more than 50 ms late"
    finally:
        s.stop()
