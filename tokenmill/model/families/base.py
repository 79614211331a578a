"""What a model family is: the switches it sets over the llama decoder (model/llama.py), read
from a Hugging Face config.json or from a GGUF file's metadata.

A family file states only its deltas. The switches live on ModelConfig (model/config.py); the
decoder reads them, the loaders fill them through the family's two readers below.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

Switches = dict  # ModelConfig field -> value


def _none(_source) -> Switches:
    return {}


@dataclass(frozen=True)
class Family:
    name: str                                  # GGUF general.architecture
    hf_types: tuple[str, ...]                  # config.json model_type values
    # llama.cpp's converter reorders the rows of q and k for families it runs with
    # interleaved ("normal") rotary; we run "rotate half" (NeoX) and reorder them back
    permuted_qk: bool = False
    from_hf: Callable[[dict], Switches] = _none          # config.json -> switches
    from_gguf: Callable[[Callable], Switches] = _none    # get(key, default) on "<arch>.*" -> switches
    # GGUF tensor name -> Hugging Face name, within a layer, beyond llama's
    layer_tensors: dict = field(default_factory=dict)
    # for a file that carries no chat template (a base model): the family's turn format, and the
    # token that ends a turn in it (stopped on besides EOS)
    chat_template: str | None = None
    end_of_turn: str | None = None
