"""GGUF file -> ModelConfig, Tokenizer, and (Hugging Face name, float tensor) pairs.

Tensors are dequantized with the `gguf` package (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
Q5_K, Q6_K and the rest it knows). llama.cpp's converter permutes q/k rows of llama models
for its interleaved rotary layout; we permute them back to the Hugging Face layout.
"""
from __future__ import annotations

import numpy as np
import torch

from ..config import SUPPORTED_ARCHITECTURES, ModelConfig
from .tokenizer import Tokenizer, tokenizer_from_gguf

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _open(path: str):
    import gguf
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, struct.error, IndexError... on junk
        raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def read_metadata(reader) -> dict:
    meta = {}
    for key, field in reader.fields.items():
        try:
            meta[key] = field.contents()
        except Exception:
            continue
    return meta


def hf_name(gguf_name: str) -> str | None:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        layer, kind, param = parts[1], parts[2], parts[3]
        if kind not in _LAYER_NAMES:
            return None
        return f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{param}"
    if parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    # inverse of llama.cpp convert_hf_to_gguf.LlamaModel.permute: rows (n_head, 2, d/2) were
    # reordered to (n_head, d/2, 2); swap them back.
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def config_from_metadata(meta: dict, tensor_names: set[str]) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch!r}; tokenmill supports: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    scaling = None
    if get("rope.scaling.type") == "linear":
        scaling = {"type": "linear", "factor": float(get("rope.scaling.factor"))}
    return ModelConfig(
        architecture=arch,
        vocab_size=int(get("vocab_size", len(meta["tokenizer.ggml.tokens"]))),
        hidden_size=hidden,
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        intermediate_size=int(get("feed_forward_length")),
        max_position=int(get("context_length", 2048)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        head_dim=int(get("attention.key_length", hidden // heads)),
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        tie_word_embeddings="output.weight" not in tensor_names,
        name=meta.get("general.name", "model"),
    )


class GGUFCheckpoint:
    def __init__(self, path: str):
        self.path = path
        self.reader = _open(path)
        self.meta = read_metadata(self.reader)
        names = {t.name for t in self.reader.tensors}
        self.config = config_from_metadata(self.meta, names)
        if "rope_freqs.weight" in names:  # llama 3.1 scaling, baked in as per-frequency divisors
            t = next(t for t in self.reader.tensors if t.name == "rope_freqs.weight")
            self.config.rope_scaling = {"rope_type": "freq_factors",
                                        "factors": np.array(t.data, dtype=np.float32).tolist()}

    @property
    def quantization(self) -> str:
        """The file's most common type among 2-D weights, e.g. "Q4_1"."""
        from collections import Counter
        kinds = Counter(t.tensor_type.name for t in self.reader.tensors if len(t.shape) == 2)
        return kinds.most_common(1)[0][0] if kinds else "F32"

    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_gguf(self.meta)

    def num_tensors(self) -> int:
        return len(self.reader.tensors)

    def weights(self):
        from gguf.quants import dequantize
        cfg = self.config
        for t in self.reader.tensors:
            name = hf_name(t.name)
            if name is None:
                continue
            shape = tuple(int(d) for d in reversed(t.shape))
            try:
                w = dequantize(t.data, t.tensor_type).reshape(shape)
            except NotImplementedError as e:
                raise ValueError(f"{t.name}: tensor type {t.tensor_type.name} cannot be dequantized") from e
            if cfg.architecture == "llama":
                if t.name.endswith("attn_q.weight") or t.name.endswith("attn_q.bias"):
                    w = unpermute_qk(w, cfg.num_heads)
                elif t.name.endswith("attn_k.weight") or t.name.endswith("attn_k.bias"):
                    w = unpermute_qk(w, cfg.num_kv_heads)
            yield name, torch.from_numpy(np.array(w, dtype=np.float32))  # a writable copy
