"""Hugging Face model directory: config.json + *.safetensors + tokenizer.json."""
from __future__ import annotations

import glob
import json
import os

from ..config import ModelConfig
from ..families import by_hf_type
from .tokenizer import Tokenizer, tokenizer_from_hf_dir


def config_from_json(cfg: dict) -> ModelConfig:
    family = by_hf_type(cfg.get("model_type"))
    heads = cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    partial = cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor", 1.0))
    fields = dict(
        architecture=family.name,
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        intermediate_size=cfg["intermediate_size"],
        max_position=cfg.get("max_position_embeddings", 2048),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=cfg.get("rope_theta", rope.get("rope_theta", 10000.0)),
        rope_scaling=cfg.get("rope_scaling") or (rope if rope.get("rope_type") not in (None, "default") else None),
        head_dim=head_dim,
        rotary_dim=int(head_dim * partial),
        attention_bias=bool(cfg.get("attention_bias", False)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        name=os.path.basename(cfg.get("_name_or_path", "") or "model"),
    )
    return ModelConfig(**{**fields, **family.from_hf(cfg)})


class HFCheckpoint:
    def __init__(self, path: str):
        self.path = path
        try:
            with open(os.path.join(path, "config.json")) as f:
                self.raw = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read config.json ({e})") from e
        self.config = config_from_json(self.raw)
        if self.config.name == "model":
            self.config.name = os.path.basename(os.path.normpath(path))
        self.files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not self.files:
            raise ValueError(f"{path}: no *.safetensors files")

    @property
    def quantization(self) -> str:
        return str(self.raw.get("torch_dtype") or self.raw.get("dtype") or "float32").upper()

    def tokenizer(self) -> Tokenizer:
        gen_eos = []
        gen_path = os.path.join(self.path, "generation_config.json")
        if os.path.exists(gen_path):
            with open(gen_path) as f:
                e = json.load(f).get("eos_token_id")
            gen_eos = e if isinstance(e, list) else [e] if e is not None else []
        return tokenizer_from_hf_dir(self.path, gen_eos)

    def num_tensors(self) -> int:
        from safetensors import safe_open
        n = 0
        for fn in self.files:
            with safe_open(fn, "pt") as f:
                n += len(list(f.keys()))
        return n

    def weights(self):
        from safetensors import safe_open
        for fn in self.files:
            with safe_open(fn, "pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name).float()
