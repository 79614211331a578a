"""Our model vs Hugging Face transformers' implementation, same random weights.

Checks prefill logits and step-by-step decode logits through the paged KV cache, for llama
(separate output layer) and qwen2 (q/k/v biases, tied embeddings), loaded from a Hugging Face
directory and from GGUF files (llama: q/k permuted by the converter, which we must undo)."""
import pytest
import torch

from tiny_models import make_hf_model, save_gguf, save_hf_dir
from tokenmill.config import EngineConfig
from tokenmill.engine.model_runner import ModelRunner
from tokenmill.model.layers.attention import AttentionMetadata
from tokenmill.model.loader import load_checkpoint


def our_logits(path: str, ids: list[int], split: int, **config) -> torch.Tensor:
    """Prefill ids[:split] in one pass, then feed the rest one token at a time (config: more
    EngineConfig fields). Returns (len(ids), vocab) logits."""
    runner = ModelRunner(EngineConfig(model=path, kv_cache_memory_gib=0.001, block_size=4, quantization="none",
                                      show_progress=False, **config), load_checkpoint(path))
    return runner_logits(runner, ids, split)


def runner_logits(runner, ids: list[int], split: int) -> torch.Tensor:
    """The same through a built ModelRunner."""
    bs = runner.block_size
    blocks = list(range(len(ids) // bs + 1))[::-1]  # a scrambled block table: order must not matter
    slots = torch.tensor([blocks[p // bs] * bs + p % bs for p in range(len(ids))])
    out = []
    for start, end in [(0, split)] + [(p, p + 1) for p in range(split, len(ids))]:
        meta = AttentionMetadata.build([(0, end - start, slots[:end])], torch.device("cpu"), bs)
        hidden = runner.model(torch.tensor(ids[start:end]), torch.arange(start, end), meta, runner.kv_caches)
        out.append(runner.model.compute_logits(hidden))
    return torch.cat(out)


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


IDS = [256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104, 105, 115, 32, 105, 115]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hf_directory_logits_match_transformers(arch, tmp_path):
    model = make_hf_model(arch, seed=3)
    path = save_hf_dir(model, str(tmp_path / arch))
    ours = our_logits(path, IDS, split=9)
    ref = hf_logits(model, IDS)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_f32_logits_match_transformers(arch, tmp_path):
    model = make_hf_model(arch, seed=4)
    path = save_gguf(model, str(tmp_path / f"{arch}.gguf"), "F32")
    ours = our_logits(path, IDS, split=5)
    torch.testing.assert_close(ours, hf_logits(model, IDS), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("qtype,tol", [("F16", 0.01), ("BF16", 0.05), ("Q8_0", 0.15),
                                       ("Q5_0", None), ("Q4_1", None), ("Q4_0", None)])
def test_gguf_quantized_types_load(qtype, tol, tmp_path):
    """Quantized weights: logits equal transformers' run on the same dequantized weights
    (exactly), and, for 8 bits and more, stay near the unquantized model. (This random model
    amplifies weight noise through its layers, so a drift bound for 4-5 bits would say little;
    the real model's perplexity is the measure there.)"""
    model = make_hf_model("llama", seed=5, hidden_size=128, intermediate_size=256)
    path = save_gguf(model, str(tmp_path / f"m-{qtype}.gguf"), qtype)
    ours = our_logits(path, IDS, split=len(IDS))
    # the same dequantized weights, put back into the HF model (un-permuting q/k ourselves)
    ck = load_checkpoint(path)
    deq = dict(ck.weights())
    state = {k: deq.get(k, v) for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings is False and "lm_head.weight" not in deq:
        state["lm_head.weight"] = deq["model.embed_tokens.weight"]
    ref_model = make_hf_model("llama", seed=5, hidden_size=128, intermediate_size=256)
    ref_model.load_state_dict(state)
    torch.testing.assert_close(ours, hf_logits(ref_model, IDS), rtol=1e-4, atol=1e-4)
    ref = hf_logits(model, IDS)
    drift = ((ours - ref).norm() / ref.norm()).item()
    assert tol is None or drift < tol, f"{qtype} moved logits by {drift:.4f} (relative)"


def test_tokenizer_from_gguf_matches_tokenizer_json(tmp_path):
    model = make_hf_model("llama")
    gguf_tok = load_checkpoint(save_gguf(model, str(tmp_path / "t.gguf"))).tokenizer()
    dir_tok = load_checkpoint(save_hf_dir(model, str(tmp_path / "d"))).tokenizer()
    text = "Héllo, wörld! 你好 🙂\n<|im_start|>user"
    assert gguf_tok.encode(text) == dir_tok.encode(text)
    assert gguf_tok.encode(text)[0] == 256  # bos added
    assert gguf_tok.encode(text)[-5:] == [258, *b"user"]  # <|im_start|> is one special token
    assert gguf_tok.decode(gguf_tok.encode(text), skip_special_tokens=False) == "<s>" + text


def test_unsupported_architecture_and_corrupt_file(tmp_path):
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_checkpoint(str(bad))
    import json
    d = tmp_path / "gpt2dir"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'; tokenmill supports: llama, .*qwen3"):
        load_checkpoint(str(d))
