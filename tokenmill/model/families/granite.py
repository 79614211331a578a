"""Granite 3: llama with four multipliers: on the embeddings, on the attention scores (in place
of 1/sqrt(head_dim)), on each residual branch, and a divisor on the logits."""
from .base import Family


def _hf(cfg: dict) -> dict:
    return {"embedding_scale": float(cfg.get("embedding_multiplier", 1.0)),
            "attention_scale": float(cfg.get("attention_multiplier", 0.0)) or None,
            "residual_scale": float(cfg.get("residual_multiplier", 1.0)),
            "logit_scale": float(cfg.get("logits_scaling", 1.0))}


def _gguf(get) -> dict:
    return {"embedding_scale": float(get("embedding_scale", 1.0)),
            "attention_scale": float(get("attention.scale", 0.0)) or None,
            "residual_scale": float(get("residual_scale", 1.0)),
            "logit_scale": float(get("logit_scale", 1.0))}


FAMILY = Family("granite", ("granite",), permuted_qk=True, from_hf=_hf, from_gguf=_gguf)
