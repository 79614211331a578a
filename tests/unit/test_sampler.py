"""Sampler: seeded reproducibility, truncation sets, penalties and logprobs, exactly."""
import math

import pytest
import torch

from tokenmill.engine.request import Request
from tokenmill.engine.sampler import Sampler, apply_penalties, apply_top_k_top_p_min_p, draw
from tokenmill.sampling_params import SamplingParams

V = 50


def req(params, prompt=(1, 2, 3), output=(), rid="r", eos=(0,)):
    r = Request(rid, list(prompt), params, eos_ids=list(eos))
    for t in output:
        r.append_token(t)
    return r


def logits(seed=0, rows=1):
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax():
    x = logits(rows=3)
    out = Sampler()(x, [req(SamplingParams(temperature=0), rid=str(i)) for i in range(3)])
    assert out.token_ids == x.argmax(-1).tolist()


def test_same_seed_same_tokens_whatever_the_batch():
    x = logits(1, rows=4)
    p = SamplingParams(temperature=1.0, seed=42)

    def draws(batch_rows, others):
        r = req(p)
        got = []
        for _ in range(20):
            reqs = [r] + [req(SamplingParams(temperature=1.0), rid=f"o{i}") for i in range(others)]
            got.append(Sampler()(x[batch_rows], reqs).token_ids[0])
        return got

    alone = draws([0], 0)
    batched = draws([0, 1, 2, 3], 3)
    assert alone == batched
    assert len(set(alone)) > 1  # it does sample


def test_top_k_top_p_min_p_never_leave_their_set():
    torch.manual_seed(0)
    x = logits(2)
    probs = x.softmax(-1)[0]
    order = probs.argsort(descending=True).tolist()
    top5 = set(order[:5])
    cum, nucleus = 0.0, set()
    for t in order:  # smallest set whose mass reaches 0.6
        nucleus.add(t)
        cum += probs[t].item()
        if cum >= 0.6:
            break
    minp = {t for t in range(V) if probs[t] >= 0.2 * probs.max()}
    s = Sampler()
    for params, allowed in ((SamplingParams(top_k=5), top5), (SamplingParams(top_p=0.6), nucleus),
                            (SamplingParams(min_p=0.2), minp)):
        seen = set()
        reqs = [req(params, rid=str(i)) for i in range(64)]
        for _ in range(30):
            seen |= set(s(x.expand(64, V), reqs).token_ids)
        assert seen <= allowed, params
        assert len(seen) == len(allowed), params  # over 1920 draws every member shows up


def test_top_k_top_p_mask_exact():
    x = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    k = apply_top_k_top_p_min_p(x, torch.tensor([2]), torch.tensor([1.0]), torch.tensor([0.0]))
    assert torch.isinf(k[0, 2:]).all() and torch.isfinite(k[0, :2]).all()
    p = x.softmax(-1)[0]
    # top_p just above p0: keeps tokens 0 and 1
    tp = apply_top_k_top_p_min_p(x, torch.tensor([0]), torch.tensor([p[0].item() + 1e-3]), torch.tensor([0.0]))
    assert torch.isfinite(tp[0, :2]).all() and torch.isinf(tp[0, 2:]).all()


def test_penalties_and_logit_bias_exact():
    x = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    p = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25,
                       logit_bias={4: 10.0, 0: -1.5})
    r = req(p, prompt=[1], output=[2, 2, 3])
    got = apply_penalties(x, [r])[0].tolist()
    # token 0: untouched except bias; 1: in prompt, negative -> *2; 2: output twice, positive -> /2,
    # then -0.5*2 -0.25; 3: once -> /2 - 0.5 - 0.25; 4: bias +10
    want = [2.0 - 1.5, -2.0, 0.25 - 1.0 - 0.25, 1.5 - 0.5 - 0.25, 8.0]
    assert got == pytest.approx(want, abs=1e-6)
    assert x.tolist() == [[2.0, -1.0, 0.5, 3.0, -2.0]]  # input untouched


def test_min_tokens_masks_eos_and_stop_ids():
    x = torch.zeros(1, 5)
    r = req(SamplingParams(min_tokens=2, stop_token_ids=[3]), eos=[0], output=[1])
    got = apply_penalties(x, [r])[0]
    assert math.isinf(got[0]) and math.isinf(got[3]) and got[1] == 0
    r2 = req(SamplingParams(min_tokens=1, stop_token_ids=[3]), eos=[0], output=[1])
    assert torch.isfinite(apply_penalties(x, [r2])).all()


def test_logprobs_are_log_softmax_of_processed_logits():
    x = logits(3, rows=2)
    p0 = SamplingParams(temperature=0, logprobs=3, presence_penalty=1.0)
    p1 = SamplingParams(temperature=0.7, logprobs=0, seed=1)
    reqs = [req(p0, output=[5, 6], rid="a"), req(p1, rid="b")]
    out = Sampler()(x, reqs)
    processed = apply_penalties(x, reqs).log_softmax(-1)
    lp, top = out.logprobs[0]
    assert lp == pytest.approx(processed[0, out.token_ids[0]].item(), abs=1e-6)
    want_top = processed[0].topk(3)
    assert list(top) == want_top.indices.tolist()
    assert list(top.values()) == pytest.approx(want_top.values.tolist(), abs=1e-6)
    lp1, top1 = out.logprobs[1]
    assert lp1 == pytest.approx(processed[1, out.token_ids[1]].item(), abs=1e-6) and top1 == {}


def test_penalty_window_only_sees_the_last_n_tokens():
    # token 5 was said long ago (prompt), token 7 just now (output)
    params = dict(repetition_penalty=2.0, frequency_penalty=1.0, temperature=0)
    x = torch.zeros(1, V) + 1.0
    whole = apply_penalties(x, [req(SamplingParams(**params), prompt=(5, 1, 1, 1), output=(7,))])
    window = apply_penalties(x, [req(SamplingParams(penalty_last_n=2, **params), prompt=(5, 1, 1, 1), output=(7,))])
    assert whole[0, 5] == 0.5 and window[0, 5] == 1.0  # out of the window: not penalised
    assert whole[0, 7] == window[0, 7] == 0.5 - 1.0     # repetition then frequency
    assert window[0, 1] == 0.5                          # prompt token inside the window


def test_logits_processor_decides_the_token():
    seen = []

    greedy = int(logits(rows=2)[1].argmax())
    forced = (greedy + 1) % V  # not what the other row picks: the check below can tell them apart

    def only_one_token(output_ids, row):
        seen.append(list(output_ids))
        masked = torch.full_like(row, float("-inf"))
        masked[forced] = row[forced]
        return masked

    r = req(SamplingParams(temperature=1.0, seed=1, logits_processors=[only_one_token]), output=(4,))
    other = req(SamplingParams(temperature=0), rid="other")
    out = Sampler()(logits(rows=2), [r, other])
    assert out.token_ids[0] == forced  # the processor's row
    assert out.token_ids[1] == greedy  # the other row is left alone
    assert seen == [[4]]


def test_extreme_parameters_give_finite_logprobs():
    r = req(SamplingParams(temperature=1e-300, repetition_penalty=5e-324, logprobs=5), prompt=tuple(range(V)))
    out = Sampler()(logits(), [r])
    lp, top = out.logprobs[0]
    assert math.isfinite(lp) and all(math.isfinite(v) for v in top.values())
    banned = req(SamplingParams(min_tokens=3, logprobs=0, temperature=0), eos=(0,))
    x = logits()
    x[0, 0] = 100.0
    out = Sampler()(x, [banned])
    assert out.token_ids[0] != 0 and math.isfinite(out.logprobs[0][0])


def test_child_seeds_never_collide_with_the_next_seed():
    from tokenmill.engine.request import child_seed
    assert child_seed(7, 0) == 7
    assert child_seed(7, 1) != child_seed(8, 0)
    assert len({child_seed(s, i) for s in range(50) for i in range(4)}) == 200
    assert 0 <= child_seed(-1, 0) < 2**64 and 0 <= child_seed(10**30, 0) < 2**64


def test_inverse_cdf_draws_follow_the_distribution():
    """draw(): frequencies of 200k draws match the probabilities (each within 5 standard
    errors); a zero-probability token is never drawn, not even at u = 0 or next to 1."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.15, 0.05, 0.0]])
    n = 200_000
    g = torch.Generator().manual_seed(0)
    u = torch.rand(n, dtype=torch.float64, generator=g)
    tokens = draw(probs.expand(n, -1), u)
    freq = torch.bincount(tokens, minlength=7).double() / n
    se = (probs[0].double() * (1 - probs[0].double()) / n).sqrt()
    assert ((freq - probs[0]).abs() <= 5 * se + 1e-12).all(), freq
    edges = draw(probs.expand(3, -1), torch.tensor([0.0, 1 - 2**-53, 0.5], dtype=torch.float64))
    assert edges.tolist() == [1, 5, 3]  # u = 0.5 sits on the edge of 1 and 3: [cdf_{i-1}, cdf_i) holds it in 3
