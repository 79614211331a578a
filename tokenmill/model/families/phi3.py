"""Phi-3 / Phi-4-mini: the llama decoder with q, k, v in one fused projection and gate, up in
another (the files keep them fused; they load whole into the merged layers), LongRoPE (short and
long divisor sets and an attention factor: layers/rope.py), a partial rotary where the config
says so (Phi-4-mini turns 3/4 of each head), and a sliding window on every layer where one
shorter than the context is given (Phi-3-mini-4k: 2047; llama.cpp leaves it off)."""
from .base import Family


def _window(size, context) -> dict:
    return {"sliding_window": int(size)} if size and int(size) < int(context) else {}


def _hf(cfg: dict) -> dict:
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type") not in (None, "default") else None)
    out = _window(cfg.get("sliding_window"), cfg.get("max_position_embeddings", 4096))
    if scaling:  # the pretraining length sits at the top of older configs
        original = scaling.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
        out["rope_scaling"] = {**scaling, "original_max_position_embeddings": original}
    return out


def _gguf(get) -> dict:
    return _window(get("attention.sliding_window", 0), get("context_length", 4096))


FAMILY = Family("phi3", ("phi3",), from_hf=_hf, from_gguf=_gguf,
                layer_tensors={"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"})
