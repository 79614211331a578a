"""Overload at 10x a queue limit of 16, streaming and non-streaming mixed, straight to a server
and through a router: only 429 (with Retry-After) or 503 come back besides answers, and every
admitted request completes."""
import asyncio

import pytest

from server_process import Server

from .conftest import server_args, tracebacks
from .load import run_load, summary

QUEUE = 16


@pytest.fixture(scope="module")
def small_server(reliability_model, tmp_path_factory):
    s = Server(server_args(reliability_model, max_queue=QUEUE, max_num_seqs=4),
               str(tmp_path_factory.mktemp("overload") / "server.log"))
    yield s
    s.stop()


def check(outcomes):
    counts = summary(outcomes)
    print(f"\noverload: {len(outcomes)} requests: {counts}; 429 share "
          f"{counts.get('busy_429', 0) / len(outcomes):.0%}")
    assert {k for k in counts} <= {"ok", "busy_429", "unavailable_503"}, counts
    assert counts.get("busy_429", 0) > 0 and counts.get("ok", 0) >= QUEUE


def test_overload_direct(small_server):
    outcomes = asyncio.run(run_load(small_server.url, 10 * QUEUE, 10 * QUEUE, max_tokens=24,
                                    hangup_share=0.0, malformed_share=0.0, seed=1))
    check(outcomes)
    assert tracebacks(small_server.log_path) == []


def test_overload_through_the_router(small_server, tmp_path):
    r = Server(["--backend", small_server.url, "--health-interval", "0.3", "--ledger", str(tmp_path / "o.db"),
                "--router-max-queue", str(QUEUE), "--max-outstanding", str(QUEUE), "--no-cache"],
               str(tmp_path / "router.log"), command="router")
    try:
        outcomes = asyncio.run(run_load(r.url, 10 * QUEUE, 10 * QUEUE, max_tokens=24,
                                        hangup_share=0.0, malformed_share=0.0, seed=2))
        check(outcomes)
        assert tracebacks(r.log_path) == []
    finally:
        r.stop()
