"""Speculative decoding on a tiny random model: output exactly as without it (greedy token for
token, seeded sampling token for token, unseeded sampling in distribution), grammar, stops,
logprobs and the opt-out.

A random model does not repeat itself, so prompt lookup would rarely draft here; these tests
swap the n-gram lookup for an oracle that drafts the continuation a run without speculation
produced, with every fourth draft token wrong: verification then sees long accepted runs and
rejections. (Real drafts on the real model: tests/model/test_spec_decode_smollm2.py.)"""
import re
from collections import Counter

import pytest

from tokenmill import LLM, SamplingParams
from tokenmill.engine.spec_decode import NgramIndex, SpecConfig, SpecState
from tokenmill.engine.structured import GrammarSpec

# repetitive prompts: a random model soon loops, and prompt lookup finds its loops too
PROMPTS = ["abcabcabcabcabc", "the cat and the cat and the cat and", "x = 1\ny = 2\nx = 1\ny =", "zz"]


class Oracle:
    """Drafts what a run without speculation produced after the same tokens."""

    def __init__(self):
        self.next: dict[tuple, int] = {}

    def learn(self, outputs):
        for o in outputs:
            for c in o.outputs:
                seq = list(o.prompt_token_ids) + list(c.token_ids)
                for i in range(len(o.prompt_token_ids), len(seq)):
                    self.next[tuple(seq[:i])] = seq[i]

    def propose(self, tokens, k):
        out, seq = [], list(tokens)
        while len(out) < k:
            t = self.next.get(tuple(seq))
            if t is None:
                break
            if len(out) % 4 == 3:
                t = (t + 1) % 256  # a wrong draft token: rejections are exercised too
            out.append(t)
            seq.append(t)
        return out


@pytest.fixture
def oracle(monkeypatch):
    o = Oracle()
    monkeypatch.setattr(NgramIndex, "propose", lambda self, tokens, k: (o.propose(tokens, k), 4))
    return o


@pytest.fixture(scope="module")
def pair(tiny_llama_dir):
    # spec_max_batch high: the batched tests below keep drafting with many requests running
    on = LLM(tiny_llama_dir, show_progress=False, spec_max_batch=10_000)
    off = LLM(tiny_llama_dir, show_progress=False, speculation="off")
    return on, off


def spec_counts(llm):
    s = llm.engine.stats
    return s.spec_num_draft_tokens, s.spec_num_accepted_tokens


def test_ngram_index_proposes_what_followed_the_latest_match():
    idx = NgramIndex(1, 3)
    assert idx.propose([1, 2, 3, 9, 1, 2, 3, 7, 1, 2], 4) == ([3, 7, 1, 2], 2)  # (1, 2) last seen at 4
    assert idx.propose([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3], 2) == ([7, 1], 3)     # (1, 2, 3): longest first
    assert NgramIndex(2, 3).propose([5, 6, 7, 8], 3) == ([], 0)


def test_draft_length_follows_the_acceptance_rate():
    st = SpecState(SpecConfig(max_draft=8))
    st.last_n = 3
    for _ in range(10):
        st.observe(8, 8)
    assert st.draft_len(3) == 8 and st.draft_len(1) < 8   # counted per match length
    for _ in range(40):
        st.observe(4, 0)
    assert st.draft_len(3) == 0
    for _ in range(40):  # no drafts for a while: it probes again
        st.idle(3)
    assert st.draft_len(3) > 0


def test_greedy_output_is_identical_alone_and_batched(pair, oracle):
    on, off = pair
    p = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True, logprobs=2)
    before = spec_counts(on)
    for prompt in PROMPTS:
        b = off.generate([prompt], p)[0]
        oracle.learn([b])
        b = b.outputs[0]
        a = on.generate([prompt], p)[0].outputs[0]
        assert a.token_ids == b.token_ids
        assert [t for t, _ in a.logprobs] == pytest.approx([t for t, _ in b.logprobs], abs=1e-4)
    batched = on.generate(PROMPTS, p)
    for prompt, out in zip(PROMPTS, batched):
        assert out.outputs[0].token_ids == off.generate([prompt], p)[0].outputs[0].token_ids
    drafted, accepted = (x - y for x, y in zip(spec_counts(on), before))
    assert drafted > 100 and drafted > accepted > 50, (drafted, accepted)


def test_seeded_sampling_gives_the_same_tokens(pair, oracle):
    on, off = pair
    before = spec_counts(on)
    for seed in range(4):
        p = SamplingParams(temperature=0.7, top_k=4, seed=seed, max_tokens=48, ignore_eos=True,
                           repetition_penalty=1.1, frequency_penalty=0.2)
        batched = on.generate(PROMPTS, p)
        for prompt, out in zip(PROMPTS, batched):
            ref = off.generate([prompt], p)[0]
            oracle.learn([ref])
            alone = ref.outputs[0].token_ids
            assert out.outputs[0].token_ids == alone
            assert on.generate([prompt], p)[0].outputs[0].token_ids == alone
    assert spec_counts(on)[1] - before[1] > 50


def _chi2_two_sample(a: Counter, b: Counter) -> tuple[float, int]:
    keys = [k for k in set(a) | set(b) if a[k] + b[k] >= 5]
    na, nb = sum(a[k] for k in keys), sum(b[k] for k in keys)
    stat = 0.0
    for k in keys:
        total = a[k] + b[k]
        ea, eb = total * na / (na + nb), total * nb / (na + nb)
        stat += (a[k] - ea) ** 2 / ea + (b[k] - eb) ** 2 / eb
    return stat, len(keys) - 1


def test_unseeded_sampling_keeps_the_distribution(pair, oracle):
    """Two-sample chi-square on the first three tokens (top_k=2: at most 8 outcomes), 1,500
    samples each way, drafts being the greedy path. The threshold is the 99.9% point, so a
    correct sampler fails 1 run in 1,000; a verifier that accepted drafts too often (or never)
    moves the counts far past it."""
    on, off = pair
    prompt = "abababababababababab"
    oracle.learn(off.generate([prompt], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)))
    p = SamplingParams(temperature=1.0, top_k=2, max_tokens=3, ignore_eos=True)
    before = spec_counts(on)
    a = Counter(tuple(o.outputs[0].token_ids) for o in on.generate([prompt] * 1500, p))
    b = Counter(tuple(o.outputs[0].token_ids) for o in off.generate([prompt] * 1500, p))
    drafted, accepted = (x - y for x, y in zip(spec_counts(on), before))
    assert accepted > 300, (drafted, accepted)   # the test exercises acceptance
    stat, dof = _chi2_two_sample(a, b)
    assert dof >= 2
    # chi-square 99.9% points for 2..7 degrees of freedom
    assert stat < {2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}[dof], (a, b)


def test_stop_strings_max_tokens_and_opt_out(pair, oracle):
    on, off = pair
    p = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ref = off.generate(["abcabcabc"], p)
    oracle.learn(ref)
    full = ref[0].outputs[0].text
    stop = full[10:13]
    for kw in ({"stop": [stop]}, {"max_tokens": 7}, {"speculative": False}):
        q = SamplingParams(temperature=0, ignore_eos=True, **{"max_tokens": 40, **kw})
        a = on.generate(["abcabcabc"], q)[0].outputs[0]
        b = off.generate(["abcabcabc"], q)[0].outputs[0]
        assert (a.text, a.token_ids, a.finish_reason) == (b.text, b.token_ids, b.finish_reason)
    before = spec_counts(on)
    on.generate(["abcabcabc"], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, speculative=False))
    assert spec_counts(on) == before


def test_grammar_rows_verify_drafts_inside_the_grammar(pair, oracle):
    on, off = pair
    pattern = "(ab|ba){4,12}c"
    spec = GrammarSpec("regex", pattern)
    before = spec_counts(on)
    for seed in range(3):
        outs = []
        for llm in (off, on):
            p = SamplingParams(temperature=1.0, seed=seed, max_tokens=40,
                               logits_processors=[llm.engine.structured.compile(spec)])
            oracle.learn([out := llm.generate(["abababab"], p)[0]])
            outs.append(out.outputs[0])
        assert re.fullmatch(pattern, outs[1].text), outs[1].text
        assert outs[0].token_ids == outs[1].token_ids
    assert spec_counts(on)[1] > before[1]


def test_no_drafts_above_max_batch(tiny_llama_dir, oracle):
    llm = LLM(tiny_llama_dir, show_progress=False, spec_max_batch=2)
    p = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    oracle.learn(llm.generate(PROMPTS, p))
    llm.generate(PROMPTS, p)       # 4 decoding at once: no drafts until two have finished
    assert spec_counts(llm)[0] == 0
    llm.generate(PROMPTS[:2], p)
    assert spec_counts(llm)[0] > 0
