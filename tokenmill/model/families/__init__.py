"""The model families tokenmill runs, one file each (see base.py). Adding a family: a file that
states its switches, its tests, and a line here."""
from __future__ import annotations

from .base import Family
from . import gemma2, gemma3, granite, llama, olmo2, phi3, qwen2, qwen3, smollm3

FAMILIES: dict[str, Family] = {f.name: f for f in (
    llama.FAMILY, qwen2.FAMILY, qwen3.FAMILY, olmo2.FAMILY, granite.FAMILY, smollm3.FAMILY, gemma2.FAMILY,
    gemma3.FAMILY, phi3.FAMILY)}
_BY_HF_TYPE = {t: f for f in FAMILIES.values() for t in f.hf_types}


def by_gguf_arch(arch: str | None) -> Family:
    if arch not in FAMILIES:
        raise ValueError(f"unsupported architecture {arch!r}; tokenmill supports: {', '.join(FAMILIES)}")
    return FAMILIES[arch]


def by_hf_type(model_type: str | None) -> Family:
    if model_type not in _BY_HF_TYPE:
        raise ValueError(f"unsupported architecture {model_type!r}; tokenmill supports: {', '.join(_BY_HF_TYPE)}")
    return _BY_HF_TYPE[model_type]
