"""Scheduler without a model: budgets, chunked prefill, admission limits, preemption, stops."""
from tokenmill.engine.block_manager import BlockManager
from tokenmill.engine.request import Request, RequestStatus
from tokenmill.engine.scheduler import Scheduler
from tokenmill.sampling_params import SamplingParams


def make(num_blocks=16, block_size=4, max_seqs=8, budget=32, chunked=True, max_len=1000):
    return Scheduler(BlockManager(num_blocks, block_size), max_seqs, budget, max_len, chunked)


def req(rid, n, **params):
    base = 100 * (1 + sum(map(ord, rid)))  # distinct prompts: no accidental prefix hits
    return Request(rid, list(range(base, base + n)), SamplingParams(**params), eos_ids=[0])


def apply(s, batch, sampled):
    """What the engine does after the forward pass: counters, then each token with its stops."""
    for r, tokens in s.update(batch, {rid: t if isinstance(t, list) else [t] for rid, t in sampled.items()}):
        for t in tokens:
            s.append_token(r, t)
            if r.status.is_finished:
                break


def run_step(s, token=7):
    """Schedule, pretend the model ran, give every caught-up request `token`."""
    batch = s.schedule()
    sampled = {r.request_id: token for r, n in zip(batch.requests, batch.num_new_tokens)
               if r.num_computed_tokens + n >= r.num_tokens}
    apply(s, batch, sampled)
    return [(r.request_id, n) for r, n in zip(batch.requests, batch.num_new_tokens)]


def test_chunked_prefill_then_decode_joins_new_requests():
    s = make(budget=10)
    s.add(req("a", 25, max_tokens=3))
    assert run_step(s) == [("a", 10)]
    s.add(req("b", 4, max_tokens=3))
    assert run_step(s) == [("a", 10)]          # a's prefill still eats the whole budget
    assert run_step(s) == [("a", 5), ("b", 4)]  # a finishes prefill, b joins
    assert run_step(s) == [("a", 1), ("b", 1)]  # both decoding


def test_no_chunking_runs_a_prompt_whole_when_the_budget_allows():
    s = make(budget=10, chunked=False)
    s.add(req("a", 6, max_tokens=5))
    s.add(req("b", 8, max_tokens=5))
    assert run_step(s) == [("a", 6)]           # b (8) does not fit next to a: not split
    assert run_step(s) == [("a", 1), ("b", 8)]  # whole, once the budget has room


def test_prefix_statistics_count_once_per_admission():
    s = make(num_blocks=4, block_size=4, budget=100)
    s.add(req("a", 12, max_tokens=50))
    run_step(s)
    s.add(req("b", 12))  # no blocks left for b: it waits, looked up again each step
    for _ in range(3):
        run_step(s)
    assert len(s.waiting) == 1
    assert s.bm.prefix_queries == 12  # a only; b is counted when it is admitted


def test_max_num_seqs_limits_running():
    s = make(max_seqs=2)
    for i in range(3):
        s.add(req(f"r{i}", 3))
    assert [rid for rid, _ in run_step(s)] == ["r0", "r1"]
    assert len(s.running) == 2 and len(s.waiting) == 1


def test_preemption_frees_newest_and_recomputes_everything():
    s = make(num_blocks=4, block_size=4, budget=64)
    a, b = req("a", 7, max_tokens=20), req("b", 7, max_tokens=20)
    s.add(a)
    s.add(b)
    run_step(s)  # a: 2 blocks, b: 2 blocks, all used; each got 1 token (8 tokens)
    assert s.bm.num_free_blocks == 0
    run_step(s)  # position 7 still fits in 2 blocks
    assert s.num_preemptions == 0
    run_step(s)  # a needs a 3rd block for position 8: b, the newest, is preempted
    assert s.num_preemptions == 1
    assert b.status == RequestStatus.WAITING and b.block_table == [] and b.num_computed_tokens == 0
    assert s.waiting[0] is b
    assert b.output_token_ids == [7, 7]  # its tokens are kept and will be recomputed
    assert a.num_output_tokens == 3 and a.block_table == [0, 1, 3]  # b freed tail first
    run_step(s)  # b needs 3 blocks to recompute its 9 tokens; only 1 is free
    assert b.status == RequestStatus.WAITING


def test_token_stops():
    s = make()
    a = req("a", 3, max_tokens=5)
    e = req("e", 3, max_tokens=5)
    m = req("m", 3, max_tokens=5, min_tokens=2)
    t = req("t", 3, max_tokens=5, stop_token_ids=[7])
    for r in (a, e, m, t):
        s.add(r)
    batch = s.schedule()
    apply(s, batch, {"a": 5, "e": 0, "m": 0, "t": 7})
    assert e.status == RequestStatus.FINISHED_STOPPED and e.block_table == []
    assert t.status == RequestStatus.FINISHED_STOPPED and t.stop_reason == 7
    assert m.status == RequestStatus.RUNNING  # eos before min_tokens does not stop
    for _ in range(4):
        run_step(s, token=5)
    assert a.status == RequestStatus.FINISHED_LENGTH and a.num_output_tokens == 5
    assert s.bm.usage == 0.0 and not s.has_unfinished()


def test_finish_aborts_waiting_and_running():
    s = make(max_seqs=1)
    a, b = req("a", 3), req("b", 3)
    s.add(a)
    s.add(b)
    run_step(s)
    s.finish(a, RequestStatus.FINISHED_ABORTED)
    s.finish(b, RequestStatus.FINISHED_ABORTED)
    assert not s.has_unfinished() and s.bm.usage == 0.0
    assert a.finish_reason == "abort" and b.finish_reason == "abort"


def test_context_length_stop():
    s = make(max_len=6)
    a = req("a", 4, max_tokens=None)
    s.add(a)
    run_step(s)
    run_step(s)
    assert a.status == RequestStatus.FINISHED_LENGTH and a.num_tokens == 6


def test_draft_tokens_ride_along_and_rejected_ones_are_not_computed():
    s = make(budget=6)
    a = req("a", 3, max_tokens=10)
    s.add(a)
    run_step(s)                               # prefill: 3 tokens, then a has 4
    a.draft = [1, 2, 3, 4, 5, 6]
    batch = s.schedule()
    assert batch.num_new_tokens == [6] and a.draft == [1, 2, 3, 4, 5]  # cut to the budget
    apply(s, batch, {"a": [1, 2, 9]})         # two accepted, then the correction
    assert a.output_token_ids == [7, 1, 2, 9] and a.draft == []
    assert a.num_computed_tokens == a.num_tokens - 1 == 6
    a.draft = [3]
    batch = s.schedule()
    assert batch.num_new_tokens == [2]
    apply(s, batch, {"a": [3, 0]})            # EOS as the bonus token stops it
    assert a.status == RequestStatus.FINISHED_STOPPED and a.output_token_ids[-2:] == [3, 0]


def test_a_draft_never_preempts():
    s = make(num_blocks=2, block_size=4, budget=32)
    a = req("a", 6, max_tokens=10)
    s.add(a)
    run_step(s)                               # 7 tokens in 2 blocks of 4: room for one more
    a.draft = [1, 2, 3]
    batch = s.schedule()
    assert batch.num_new_tokens == [1] and a.draft == [] and a.status == RequestStatus.RUNNING
