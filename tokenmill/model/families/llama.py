"""Llama 2/3, and Mistral / Ministral: the decoder as model/llama.py writes it; Mistral with its
sliding window on every layer where the config gives one shorter than the context."""
from .base import Family


def _hf(cfg: dict) -> dict:
    window = cfg.get("sliding_window") or 0
    if cfg.get("model_type") == "mistral" and 0 < window < cfg.get("max_position_embeddings", 0):
        return {"sliding_window": int(window), "window_layers": (True,) * cfg["num_hidden_layers"]}
    return {}


def _gguf(get) -> dict:
    window = int(get("attention.sliding_window", 0) or 0)
    return {"sliding_window": window, "window_layers": (True,) * int(get("block_count"))} if window else {}


FAMILY = Family("llama", ("llama", "mistral"), permuted_qk=True, from_hf=_hf, from_gguf=_gguf)
