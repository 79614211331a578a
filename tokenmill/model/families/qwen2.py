"""Qwen2 / Qwen2.5: llama with biases on the q, k and v projections."""
from .base import Family

FAMILY = Family("qwen2", ("qwen2",), from_hf=lambda cfg: {"attention_bias": True})
