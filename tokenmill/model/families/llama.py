"""Llama 2/3 (and Mistral without a sliding window): the decoder as model/llama.py writes it."""
from .base import Family


def _hf(cfg: dict) -> dict:
    if cfg.get("model_type") == "mistral" and cfg.get("sliding_window") and \
            cfg["sliding_window"] < cfg.get("max_position_embeddings", 0):
        raise ValueError("mistral with sliding-window attention is not supported")
    return {}


FAMILY = Family("llama", ("llama", "mistral"), permuted_qk=True, from_hf=_hf)
