"""Embeddings on the bundled SmolLM2 through its production path (the file's Q4_1 blocks, the
C++ layer loop, an int8 KV cache): every pooled row is the hidden state that the model's own
next-token logits come from. Checked two ways that need no other implementation: the last
token's vector gives the same next-token logits as a generation request, and the mean over a
prompt equals the mean of the last-token vectors of all its prefixes."""
import pytest
import torch

from tokenmill import LLM, SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return LLM(smollm2_path, kv_cache_memory_gib=0.1, show_progress=False)


def _vec(llm, ids, mode):
    return torch.tensor(llm.generate([ids], SamplingParams(max_tokens=1, pooling=mode))[0].outputs[0].embedding)


def test_last_token_vector_gives_the_models_next_token_logprobs(llm):
    ids = llm.engine.tokenizer.encode("The capital of France is")
    v = _vec(llm, ids, "last")
    logits = llm.engine.runner.model.compute_logits(v[None])[0]
    out = llm.generate([ids], SamplingParams(max_tokens=1, temperature=0, logprobs=5))[0].outputs[0]
    token, (lp, top) = out.token_ids[0], out.logprobs[0]
    assert int(logits.argmax()) == token
    mine = logits.log_softmax(-1)
    for t, value in top.items():
        assert abs(float(mine[t]) - value) < 1e-3


def test_mean_is_the_mean_of_the_prefixes_last_vectors(llm):
    ids = llm.engine.tokenizer.encode("Embeddings pool the final hidden states of every prompt token.")
    mean = _vec(llm, ids, "mean")
    prefixes = torch.stack([_vec(llm, ids[:k], "last") for k in range(1, len(ids) + 1)])
    assert torch.allclose(mean, prefixes.mean(0), atol=2e-3, rtol=1e-3)
    first = _vec(llm, ids, "cls")
    assert torch.allclose(first, prefixes[0], atol=2e-3, rtol=1e-3)
