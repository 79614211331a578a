"""Each family against Hugging Face transformers' own implementation: a tiny random-weight model
built from the family's real config with its dimensions shrunk, saved as a Hugging Face
directory and converted to GGUF by llama.cpp's own convert_hf_to_gguf.py (from the llama.cpp
source that bench/build_llama_server.sh fetches). From both files: prefill and step-by-step
decode logits through the paged KV cache, and greedy answers through the engine alone, batched
and after a prefix-cache hit."""
import os
import subprocess
import sys

import pytest
import torch

from tests.model.test_tiny_parity import IDS, hf_logits, our_logits
from tiny_models import make_hf_model, save_hf_dir
from tokenmill import LLM, SamplingParams

SHRUNK = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)

# the real configs' own switches (Llama-3.2-1B-Instruct, Qwen2.5-0.5B-Instruct, Qwen3-0.6B,
# OLMo-2-0425-1B, granite-3.3-2b-instruct, Ministral-8B-Instruct, gemma-3-270m, gemma-2-2b-it,
# Phi-4-mini-instruct, SmolLM3-3B),
# their sizes shrunk; windows shorter than the prompts and answers below
FAMILIES = {
    "llama": dict(rope_theta=500000.0, tie_word_embeddings=True, num_hidden_layers=2,
                  rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "qwen2": dict(rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, num_hidden_layers=2),
    "qwen3": dict(head_dim=32, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  attention_bias=False, num_hidden_layers=2),
    "olmo2": dict(rope_theta=500000.0, rms_norm_eps=1e-6, attention_bias=False, num_hidden_layers=2),
    "granite": dict(embedding_multiplier=12.0, attention_multiplier=0.015625, residual_multiplier=0.22,
                    logits_scaling=8.0, rope_theta=10000000.0, tie_word_embeddings=True, num_hidden_layers=2),
    "mistral": dict(rope_theta=1000000.0, sliding_window=16, num_hidden_layers=2),  # Ministral-8B's window, shrunk
    "gemma3_text": dict(head_dim=32, query_pre_attn_scalar=32, sliding_window=8, num_hidden_layers=6,
                        rope_theta=1000000.0, rope_local_base_freq=10000.0, rms_norm_eps=1e-6,
                        tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh", pad_token_id=0),
    # gemma-2-2b-it; its caps (50 on scores, 30 on logits) shrunk with the sizes, to where the tiny
    # model's scores and logits reach, so that a cap not applied shows
    "gemma2": dict(head_dim=32, query_pre_attn_scalar=32, sliding_window=8, num_hidden_layers=4,
                   attn_logit_softcapping=1.0, final_logit_softcapping=2.0, rope_theta=10000.0,
                   rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
                   pad_token_id=0),
    # Phi-4-mini-instruct: fused projections, LongRoPE (its 48 factor pairs shrunk to the 6 a
    # 3/4 rotary of 16 takes; its 131072 / 4096 positions to 512 / 128), partial rotary
    "phi3": dict(partial_rotary_factor=0.75, rope_theta=10000.0, tie_word_embeddings=True, num_hidden_layers=2,
                 max_position_embeddings=512, original_max_position_embeddings=128, sliding_window=None,
                 rope_scaling={"type": "longrope", "short_factor": [1.0, 1.05, 1.1, 1.2, 1.4, 1.8],
                               "long_factor": [1.0, 1.5, 2.5, 4.0, 8.0, 16.0]}, pad_token_id=0),
    "smollm3": dict(rope_theta=5000000.0, no_rope_layer_interval=4, tie_word_embeddings=True, pad_token_id=None,
                    num_hidden_layers=4),  # layer 3 has no rotary
}


# the engine's context in these tests: within phi3's pretraining length (128), where Hugging Face
# and tokenmill take LongRoPE's short factors (test_longrope_past_the_pretraining_length: the long)
CONTEXT = 128


def family_model(arch: str, seed: int):
    model = make_hf_model(arch, seed=seed, **SHRUNK, **FAMILIES[arch])
    with torch.no_grad():  # q/k norms random too, so that loading them wrongly shows
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight", "layernorm.weight")):
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="session")
def converted(tmp_path_factory, llama_cpp_source):
    """{family: (the transformers model, {"hf": its directory, "gguf": llama.cpp's conversion of it})},
    every family converted in one run of the converter. No "gguf" for Mistral: llama.cpp's
    converter writes no sliding window for it, so its file says llama with full attention, and a
    window the file does not state is not guessed."""
    out, pairs = {}, []
    for arch in FAMILIES:
        model = family_model(arch, seed=7)
        where = tmp_path_factory.mktemp(arch)
        out[arch] = (model, {"hf": save_hf_dir(model, str(where / "hf"))})
        if arch != "mistral":
            out[arch][1]["gguf"] = str(where / f"{arch}.gguf")
            pairs += [out[arch][1]["hf"], out[arch][1]["gguf"]]
    done = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "convert_hf.py"),
                           llama_cpp_source, *pairs], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


# every (family, file) there is: Mistral has no GGUF (see converted)
FILES = [(arch, kind) for arch in FAMILIES for kind in ("hf", "gguf") if (arch, kind) != ("mistral", "gguf")]


@pytest.mark.parametrize("arch,kind", FILES)
def test_logits_match_transformers(converted, arch, kind):
    model, files = converted[arch]
    ours = our_logits(files[kind], IDS, split=9, max_model_len=CONTEXT)
    torch.testing.assert_close(ours, hf_logits(model, IDS), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["hf", "gguf"])
def test_longrope_past_the_pretraining_length(converted, kind):
    # a 300-token forward: Hugging Face takes the long factors for it, and tokenmill with a context
    # past the pretraining length (128) does for every position
    model, files = converted["phi3"]
    ids = [256] + torch.randint(0, 256, (299,), generator=torch.Generator().manual_seed(1)).tolist()
    ours = our_logits(files[kind], ids, split=300, max_model_len=512)
    torch.testing.assert_close(ours, hf_logits(model, ids), rtol=1e-4, atol=1e-4)
    from tokenmill.model.layers.rope import RotaryEmbedding
    scaling = model.config.rope_parameters
    short, long = RotaryEmbedding(12, 512, 10000.0, scaling), RotaryEmbedding(12, 512, 10000.0, scaling)
    short.trim(128)  # the model's 512 positions give the attention factor, the context the set
    assert not torch.allclose(short.inv_freq, long.inv_freq) and short.attention_factor == long.attention_factor > 1


PROMPTS = [[256, *b"Hello, world"], [256, *b"The quick brown fox"], [256, *b"1 2 3 4"], [256, *b"def f(x):"]]


_GREEDY: dict = {}  # (model, prompt) -> transformers' answer, for the HF and the GGUF test


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    key = (model, tuple(ids), n)  # the model itself: kept alive, never confused with a later one
    if key not in _GREEDY:
        _GREEDY[key] = _hf_greedy(model, ids, n)
    return _GREEDY[key]


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("arch,kind", FILES)
def test_greedy_matches_transformers_alone_batched_and_cached(converted, arch, kind):
    model, files = converted[arch]
    want = [hf_greedy(model, p, 32) for p in PROMPTS]
    llm = LLM(model=files[kind], quantization="none", kv_cache_memory_gib=0.01, block_size=4, max_model_len=CONTEXT)
    params = SamplingParams(max_tokens=32, min_tokens=32, temperature=0)
    alone = [llm.generate([p], params)[0].outputs[0].token_ids for p in PROMPTS]
    hits = llm.engine.get_stats().prefix_cache_hits
    batched = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]  # their blocks are cached now
    assert llm.engine.get_stats().prefix_cache_hits > hits
    assert alone == want, arch
    assert batched == want, arch


def test_what_is_not_run_is_refused_by_name(tmp_path):
    """A pre-tokenizer, a rope type or a tensor that tokenmill does not run stops the load with
    its name, never runs approximately."""
    from tiny_models import SPECIALS, byte_tokens
    from tokenmill.model.loader.gguf import config_from_metadata
    from tokenmill.model.loader.tokenizer import tokenizer_from_gguf
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": byte_tokens() + SPECIALS,
            "tokenizer.ggml.merges": [], "tokenizer.ggml.pre": "deepseek-llm", "tokenizer.ggml.eos_token_id": 257}
    with pytest.raises(ValueError, match="pre-tokenizer 'deepseek-llm'"):
        tokenizer_from_gguf(meta)
    meta["tokenizer.ggml.pre"] = "gpt-2"
    assert tokenizer_from_gguf(meta).encode("hi", add_special_tokens=False) == [104, 105]
    arch = {"general.architecture": "qwen3", "qwen3.attention.head_count": 4, "qwen3.embedding_length": 64,
            "qwen3.block_count": 2, "qwen3.feed_forward_length": 128, "tokenizer.ggml.tokens": ["a"] * 260}
    with pytest.raises(ValueError, match="rope scaling 'yarn'"):
        config_from_metadata({**arch, "qwen3.rope.scaling.type": "yarn"}, set())
    with pytest.raises(ValueError, match="sliding_window"):
        config_from_metadata({**arch, "qwen3.attention.sliding_window": 4096}, set())
    with pytest.raises(ValueError, match="unsupported architecture 'phi2'"):
        config_from_metadata({**arch, "general.architecture": "phi2"}, set())
