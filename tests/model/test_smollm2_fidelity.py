"""The bundled SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to fp32): greedy token ids equal
Hugging Face transformers' greedy output on the same file, one request at a time and all
batched together; and the same tokens alone / batched / with and without prefix caching /
under preemption forced by a tiny KV cache."""
import os

import pytest
import torch

from tokenmill import LLM, SamplingParams

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain in two sentences why the sky is blue.",
    "List three prime numbers greater than 10.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Give me a short tip for learning to code.",
    "Who wrote Romeo and Juliet? Answer briefly, then say one thing about the play's setting.",
]
NEW_TOKENS = 48
# min_tokens masks EOS exactly as transformers' min_new_tokens does
GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)


@pytest.fixture(scope="module")
def llm(smollm2_path):
    # fidelity is checked on the weights dequantized to fp32, as transformers runs them
    return LLM(smollm2_path, quantization="none", show_progress=False)


@pytest.fixture(scope="module")
def prompts(llm):
    return [llm.tokenizer.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def hf_tokens(smollm2_path, prompts):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(smollm2_path),
                                                 gguf_file=os.path.basename(smollm2_path),
                                                 dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            gen = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 min_new_tokens=NEW_TOKENS, attention_mask=torch.ones(1, len(ids)),
                                 pad_token_id=2)
            out.append(gen[0, len(ids):].tolist())
    return out


def tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_matches_transformers_one_at_a_time(llm, prompts, hf_tokens):
    ours = [tokens(llm.generate([p], GREEDY))[0] for p in prompts]
    assert ours == hf_tokens


def test_matches_transformers_batched(llm, prompts, hf_tokens):
    assert tokens(llm.generate(prompts, GREEDY)) == hf_tokens


def test_answers_paris(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(temperature=0, max_tokens=30))
    assert "Paris" in out[0].outputs[0].text


# the default (the file's Q4_1 blocks where the VNNI kernel runs, else int8), fp32, and int8
@pytest.mark.parametrize("quantization", ["auto", "none", "int8"])
def test_invariance_mixed_batch_prefix_cache_and_preemption(smollm2_path, prompts, quantization):
    # mixed lengths: the 8 chat prompts plus a long and a short raw prompt
    batch = prompts + [list(range(1000, 1180)), [504, 3575]]
    params = SamplingParams(temperature=0, max_tokens=24, min_tokens=24)
    base = LLM(smollm2_path, quantization=quantization, show_progress=False)
    alone = [tokens(base.generate([p], params))[0] for p in batch]
    del base
    for kwargs in ({"enable_prefix_caching": False},
                   {"enable_prefix_caching": True, "max_num_batched_tokens": 64},
                   {"kv_cache_memory_gib": 0.011 if quantization == "none" else 0.003}):  # 16 blocks, fp32 or int8 KV: must preempt
        llm = LLM(smollm2_path, quantization=quantization, show_progress=False, **kwargs)
        assert tokens(llm.generate(batch, params)) == alone, kwargs
        # the same prompts again: now served from the prefix cache where it is on
        assert tokens(llm.generate(batch[:8], params)) == alone[:8], kwargs
        stats = llm.engine.get_stats()
        if kwargs.get("enable_prefix_caching", True):
            assert stats.prefix_cache_hits > 0
        if "kv_cache_memory_gib" in kwargs:
            assert stats.num_preemptions > 0
        assert stats.kv_cache_usage == 0.0
