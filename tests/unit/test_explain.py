"""The token explorer's stages replay the sampler exactly: the token drawn from the replayed
stages is the token the engine sampled, greedy and seeded, with penalties and filters."""
import math

import pytest
import torch

from tokenmill import SamplingParams
from tokenmill.engine import explain as ex

SETTINGS = [
    dict(temperature=0.0),
    dict(temperature=0.8, seed=5),
    dict(temperature=1.3, top_k=7, seed=11),
    dict(temperature=0.9, top_p=0.7, min_p=0.05, seed=2),
    dict(temperature=1.0, repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.4, seed=9),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_replayed_draw_is_the_engine_token(tiny_llm, settings):
    params = SamplingParams(max_tokens=12, return_raw_logits=True, **settings)
    prompt = [256, 5, 17, 99, 5, 17]
    out = tiny_llm.generate([prompt], params)[0].outputs[0]
    assert len(out.raw_logits) == len(out.token_ids) == 12
    eos = tiny_llm.engine.tokenizer.eos_ids
    for k, token in enumerate(out.token_ids):
        st = ex.stages(out.raw_logits[k], params, prompt, out.token_ids[:k], eos)
        assert ex.pick(st, params, k) == token
        probs = st.probs()
        assert abs(float(probs["filtered"].sum()) - 1) < 1e-5
        assert float(probs["filtered"][token]) > 0
        rows = ex.candidates(st, 5, token)
        assert any(r["id"] == token for r in rows)
        for r in rows:
            assert abs(r["p_raw"] - math.exp(r["logprob"])) < 1e-6


def test_filters_leave_what_they_promise(tiny_llm):
    raw = torch.randn(300, generator=torch.Generator().manual_seed(0))
    st = ex.stages(raw, SamplingParams(temperature=1.0, top_k=2), [1], [], [])
    assert ex.kept(st) == 2
    assert abs(float(st.probs()["filtered"].sum()) - 1) < 1e-6
    greedy = ex.stages(raw, SamplingParams(temperature=0), [1], [], [])
    assert ex.kept(greedy) == 1 and ex.pick(greedy, SamplingParams(temperature=0), 0) == int(raw.argmax())
    # penalties change the penalized stage only for tokens seen before
    pen = ex.stages(raw, SamplingParams(temperature=1.0, presence_penalty=1.0), [1], [4, 4], [])
    changed = (pen.penalized != pen.raw).nonzero().flatten().tolist()
    assert changed == [4]
