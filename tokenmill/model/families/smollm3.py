"""SmolLM3: llama with no rotary in every 4th layer (config.json's no_rope_layers: 1 where a
layer rotates; llama.cpp keeps the step of 4 fixed and writes no key for it)."""
from .base import Family

_STEP = 4


def _hf(cfg: dict) -> dict:
    n = cfg["num_hidden_layers"]
    flags = cfg.get("no_rope_layers") or [int((i + 1) % cfg.get("no_rope_layer_interval", _STEP) != 0)
                                          for i in range(n)]
    return {"rope_layers": tuple(bool(f) for f in flags[:n])}


def _gguf(get) -> dict:
    n = int(get("block_count"))
    return {"rope_layers": tuple((i + 1) % _STEP != 0 for i in range(n))}


FAMILY = Family("smollm3", ("smollm3",), permuted_qk=True, from_hf=_hf, from_gguf=_gguf)
