"""Qwen3: an RMSNorm over each head of q and of k before the rotary, no q/k/v biases, and a
head_dim of its own (not hidden / heads)."""
from .base import Family

FAMILY = Family("qwen3", ("qwen3",), from_hf=lambda cfg: {"qk_norm": "head"},
                from_gguf=lambda get: {"qk_norm": "head"},
                layer_tensors={"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"})
