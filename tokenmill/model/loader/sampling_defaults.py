"""The sampling a model's makers recommend, for the chat page, `tokenmill chat` and (with
`serve --generation-config auto`) the API routes' unset fields: a Hugging Face directory's
generation_config.json (as vLLM reads it), a GGUF file's `general.sampling.*` keys (as
llama.cpp writes them), else our own defaults.

Our defaults were chosen with bench/first_chat.py (12 simple questions, 20 samples each, the
bundled SmolLM2-135M): temperature 0.3 with llama.cpp's filters answered 87% right, llama.cpp
server's defaults (temperature 0.8) 78%, OpenAI's (temperature 1) 52%, greedy 75% (and one
question never)."""
from __future__ import annotations

import json
import os

FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
DEFAULTS = {"temperature": 0.3, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
_GGUF_KEYS = {"general.sampling.temp": "temperature", "general.sampling.top_k": "top_k",
              "general.sampling.top_p": "top_p", "general.sampling.min_p": "min_p",
              "general.sampling.penalty_repeat": "repetition_penalty"}


def parse(spec: str) -> dict:
    """`temperature=0.7,top_p=0.9` (serve --default-sampling) as a dict; unknown names refused."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name not in FIELDS or not value:
            raise ValueError(f"--default-sampling takes NAME=VALUE pairs with NAME one of {', '.join(FIELDS)}; "
                             f"got {part!r}")
        out[name] = int(value) if name == "top_k" else float(value)
    return out


def recommended(model_path: str) -> tuple[dict, str]:
    """(the sampling fields, where they come from)."""
    found: dict = {}
    source = "tokenmill defaults (bench/first_chat.py)"
    if os.path.isdir(model_path):
        path = os.path.join(model_path, "generation_config.json")
        if os.path.exists(path):
            with open(path) as f:
                cfg = json.load(f)
            found = {k: cfg[k] for k in FIELDS if isinstance(cfg.get(k), (int, float))}
            source = "generation_config.json"
    elif model_path.endswith(".gguf"):
        from .gguf import header_metadata
        meta = header_metadata(model_path)
        found = {name: meta[key] for key, name in _GGUF_KEYS.items() if isinstance(meta.get(key), (int, float))}
        source = "the GGUF file's general.sampling keys"
    if not found:
        return dict(DEFAULTS), "tokenmill defaults (bench/first_chat.py)"
    if "top_k" in found:
        found["top_k"] = int(found["top_k"])
    return found, source
