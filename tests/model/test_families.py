"""Each family against Hugging Face transformers' own implementation: a tiny random-weight model
built from the family's real config with its dimensions shrunk, saved as a Hugging Face
directory. Prefill and step-by-step decode logits through the paged KV cache, and greedy
answers through the engine alone, batched and after a prefix-cache hit."""
import pytest
import torch

from tests.model.test_tiny_parity import IDS, hf_logits, our_logits
from tiny_models import make_hf_model, save_hf_dir
from tokenmill import LLM, SamplingParams

SHRUNK = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)

# the real configs' own switches (Qwen3-0.6B, OLMo-2-0425-1B, granite-3.3-2b-instruct, SmolLM3-3B),
# their sizes shrunk
FAMILIES = {
    "qwen3": dict(head_dim=32, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  attention_bias=False, num_hidden_layers=2),
    "olmo2": dict(rope_theta=500000.0, rms_norm_eps=1e-6, attention_bias=False, num_hidden_layers=2),
    "granite": dict(embedding_multiplier=12.0, attention_multiplier=0.015625, residual_multiplier=0.22,
                    logits_scaling=8.0, rope_theta=10000000.0, tie_word_embeddings=True, num_hidden_layers=2),
    "smollm3": dict(rope_theta=5000000.0, no_rope_layer_interval=4, tie_word_embeddings=True, pad_token_id=None,
                    num_hidden_layers=4),  # layer 3 has no rotary
}


def family_model(arch: str, seed: int):
    model = make_hf_model(arch, seed=seed, **SHRUNK, **FAMILIES[arch])
    with torch.no_grad():  # q/k norms random too, so that loading them wrongly shows
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight", "layernorm.weight")):
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_dir(request, tmp_path_factory):
    model = family_model(request.param, seed=7)
    return request.param, model, save_hf_dir(model, str(tmp_path_factory.mktemp(request.param)))


def test_logits_match_transformers(family_dir):
    arch, model, path = family_dir
    ours = our_logits(path, IDS, split=9)
    torch.testing.assert_close(ours, hf_logits(model, IDS), rtol=1e-4, atol=1e-4)


PROMPTS = [[256, *b"Hello, world"], [256, *b"The quick brown fox"], [256, *b"1 2 3 4"], [256, *b"def f(x):"]]


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_greedy_matches_transformers_alone_batched_and_cached(family_dir):
    arch, model, path = family_dir
    want = [hf_greedy(model, p, 32) for p in PROMPTS]
    llm = LLM(model=path, quantization="none", kv_cache_memory_gib=0.01, block_size=4)
    params = SamplingParams(max_tokens=32, min_tokens=32, temperature=0)
    alone = [llm.generate([p], params)[0].outputs[0].token_ids for p in PROMPTS]
    hits = llm.engine.get_stats().prefix_cache_hits
    batched = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]  # their blocks are cached now
    assert llm.engine.get_stats().prefix_cache_hits > hits
    assert alone == want, arch
    assert batched == want, arch
