"""How a model's embeddings are pooled, as its files say: a GGUF file's `{arch}.pooling_type`
(llama.cpp's numbers: 1 mean, 2 cls, 3 last), a Hugging Face directory's sentence-transformers
`1_Pooling/config.json`; else mean over the prompt's final hidden states (a decoder model that
was not trained for embeddings: llama.cpp's --pooling mean)."""
from __future__ import annotations

import json
import os

_GGUF = {1: "mean", 2: "cls", 3: "last"}
_ST = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}


def pooling_of(model_path: str | None) -> tuple[str, str]:
    """(mean | cls | last, where that comes from)."""
    if model_path and model_path.endswith(".gguf") and os.path.isfile(model_path):
        from .gguf import header_metadata
        meta = header_metadata(model_path)
        arch = meta.get("general.architecture")
        kind = _GGUF.get(meta.get(f"{arch}.pooling_type"))
        if kind:
            return kind, f"the GGUF file's {arch}.pooling_type"
    elif model_path and os.path.isdir(model_path):
        path = os.path.join(model_path, "1_Pooling", "config.json")
        if os.path.exists(path):
            with open(path) as f:
                cfg = json.load(f)
            for key, kind in _ST.items():
                if cfg.get(key):
                    return kind, "1_Pooling/config.json"
    return "mean", "default (mean)"
