"""Gemma 2: Gemma 3's decoder (gemma3.py) without q/k norms, a window on every other layer (the
first of each pair), one rotary base, and soft caps: each attention score s becomes
c * tanh(s / c) (c = attn_logit_softcapping, 50), and each logit likewise (final_logit_softcapping, 30)."""
from .base import Family
from .gemma3 import NORMS, TEMPLATE, gguf_switches, hf_switches


def _hf(cfg: dict) -> dict:
    return {**hf_switches(cfg, 2), "attn_softcap": float(cfg.get("attn_logit_softcapping") or 0.0),
            "logit_softcap": float(cfg.get("final_logit_softcapping") or 0.0)}


def _gguf(get) -> dict:
    return {**gguf_switches(get, 2, big_layers=46), "attn_softcap": float(get("attn_logit_softcapping", 0.0)),
            "logit_softcap": float(get("final_logit_softcapping", 0.0))}


FAMILY = Family("gemma2", ("gemma2",), from_hf=_hf, from_gguf=_gguf, chat_template=TEMPLATE,
                end_of_turn="<end_of_turn>", layer_tensors=NORMS)
