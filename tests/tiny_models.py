"""Tiny random-weight models for fast tests, written the way real ones ship:
a Hugging Face directory (config.json, model.safetensors, tokenizer.json) or a GGUF file.

The tokenizer is byte-level with no merges: 256 byte tokens plus a few special tokens, and a
ChatML-style chat template.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
VOCAB = 256 + len(SPECIALS)
BOS, EOS = 256, 257
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_tokens() -> list[str]:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # order the 256 symbols by the byte they stand for, as GPT-2's bytes_to_unicode does
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, (chr(c) for c in cs)))
    tokens = [table[b] for b in range(256)]
    assert set(tokens) == set(alphabet)
    return tokens


def make_tokenizer() -> Tokenizer:
    vocab = {t: i for i, t in enumerate(byte_tokens() + SPECIALS)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


def hf_config(arch: str, **over) -> dict:
    cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               rms_norm_eps=1e-5, rope_theta=10000.0, initializer_range=0.3,
               tie_word_embeddings=(arch == "qwen2"), bos_token_id=BOS, eos_token_id=EOS,
               model_type=arch)
    cfg.update(over)
    return cfg


def make_hf_model(arch: str, seed: int = 0, **over):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = hf_config(arch, **over)
    config = AutoConfig.for_model(**cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    # random norms and biases too, so that loading them wrongly shows
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0, 0.3)
    return model


def save_hf_dir(model, path: str) -> str:
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    make_tokenizer().save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        # the class that reads a bare tokenizer.json, and every special token named (else
        # transformers may pick the family's own class, which adds tokens this vocabulary lacks)
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "</s>",
                   "add_bos_token": True, "chat_template": CHAT_TEMPLATE,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    return path


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    # what llama.cpp's converter does to llama q/k rows
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def save_gguf(model, path: str, qtype: str = "F32", chat_template: str = CHAT_TEMPLATE) -> str:
    """Write an HF llama/qwen2 model as GGUF the way llama.cpp's converter does (q/k permuted
    for llama), with 2-D weights in `qtype` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0...)."""
    import gguf
    from gguf.quants import quantize
    cfg = model.config
    arch = cfg.model_type
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = byte_tokens() + SPECIALS
    w.add_token_list(tokens)
    w.add_token_types([1] * 256 + [3] * len(SPECIALS))
    w.add_token_merges([])
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_add_bos_token(True)
    w.add_chat_template(chat_template)
    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    qt = gguf.GGMLQuantizationType[qtype]
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        base, param = name.rsplit(".", 1)
        if base.startswith("model.layers."):
            _, _, i, rest = base.split(".", 3)
            gname = f"blk.{i}.{layer[rest]}.{param}"
        else:
            gname = f"{names[base]}.{param}"
        a = t.float().numpy()
        if arch == "llama" and gname.startswith("blk.") and gname.split(".")[2] in ("attn_q", "attn_k"):
            heads = cfg.num_attention_heads if ".attn_q." in gname else cfg.num_key_value_heads
            a = _permute_qk(a, heads)
        if a.ndim == 2 and qtype != "F32":
            data = quantize(a, qt)
            if data.dtype == np.float16:
                w.add_tensor(gname, data)
            else:  # raw bytes: the writer derives the element shape from the byte shape
                w.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=qt)
        else:
            w.add_tensor(gname, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
