"""Every decoder layer of a step in one C++ call, where the weights allow it: the same kernel
calls the Python layers make (model/llama.py), in the same order, so the numbers are the same
bit for bit (tests/unit/test_decode_loop.py), without the interpreter between them.

Two loops: csrc/decode_loop.cpp for the plain llama decoder with packed int8 or 4-bit weights
(its 4-bit team loop also fuses the calls), csrc/family_loop.cpp for every family's switches and
every weight format, a GGUF file's own blocks included. The Python layers run the rest: CUDA,
float weights, a partial rotary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .layers.gguf_linear import GGUFLinear
from .layers.native import fused_ops
from .layers.q4 import Q4Linear

_NONE = torch.empty(0)


def _linears(layer):
    return (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)


def _packed(m) -> list | None:
    """A linear as decode_loop.cpp takes it (4 entries), or None if it is in neither packed format."""
    if getattr(m, "_packed", None) is None or (isinstance(m, Q4Linear) and m.out_features % 16):
        return None
    if isinstance(m, Q4Linear):
        return [m._packed, _NONE, _NONE, m._bias]
    return [m._packed, m._scale32, m._wsum, m._bias32]


def _any_format(m) -> list | None:
    """A linear as family_loop.cpp takes it (5 entries), or None."""
    if isinstance(m, GGUFLinear):
        if m.portable or len(m._data) > 3 or not m.is_complete():
            return None
        parts = list(m._data) + [_NONE] * (3 - len(m._data))
        bias = m.bias.data if m.bias is not None else _NONE
        return [torch.tensor(m._types, dtype=torch.long), *parts, bias]
    packed = _packed(m)
    return None if packed is None else packed + [_NONE]


def _cpu32(weights) -> bool:
    return all(w.dtype == torch.float32 and w.device.type == "cpu" for w in weights if w.numel())


@dataclass
class LlamaLoop:
    kern: object
    weights: list

    def run(self, model, x, positions, meta, kv_caches, out_rows):
        a = model.layers[0].self_attn
        return self.kern.decode_layers(
            x, positions, self.weights, [k for k, _ in kv_caches], [v for _, v in kv_caches],
            meta.slot_mapping, meta.row_seq, meta.row_ctx, meta.block_tables, model.rope.cos,
            model.rope.sin, model.norm.weight, model.norm.eps, a.scale, a.num_heads, a.num_kv_heads, out_rows)


@dataclass
class FamilyLoop:
    kern: object
    weights: list
    info: torch.Tensor  # (L, 3): window, rotary, local rotary base

    def run(self, model, x, positions, meta, kv_caches, out_rows):
        cfg, a, local = model.config, model.layers[0].self_attn, meta.local
        ropes = [model.rope.cos, model.rope.sin]
        ropes += [model.rope_local.cos, model.rope_local.sin] if model.rope_local is not None else [_NONE, _NONE]
        return self.kern.family_layers(
            x, positions, self.weights, self.info, [k for k, _ in kv_caches], [v for _, v in kv_caches],
            [meta.slot_mapping, local.slot_mapping if local is not None else _NONE], meta.row_seq, meta.row_ctx,
            [meta.block_tables, local.block_tables if local is not None else _NONE], ropes, model.norm.weight,
            [model.norm.eps, a.scale, a.softcap, cfg.residual_scale],
            [a.num_heads, a.num_kv_heads, {None: 0, "head": 1, "full": 2}[cfg.qk_norm], int(cfg.pre_norms),
             int(cfg.post_norms), int(cfg.hidden_act == "gelu_tanh")], out_rows)


def decode_plan(model, x: torch.Tensor):
    """A loop for this model's steps, or None where the Python layers must run (not CPU float32,
    float weights, a partial rotary, no kernels)."""
    kern = fused_ops(x)
    if kern is None or not hasattr(kern, "family_layers"):
        return None
    if model.config.plain_llama:
        weights = []
        for layer in model.layers:
            packs = [_packed(m) for m in _linears(layer)]
            norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
            if None in packs or not _cpu32(norms):
                break
            weights += [norms[0], *packs[0], *packs[1], norms[1], *packs[2], *packs[3]]
        else:
            return LlamaLoop(kern, weights)
    if model.rope.cos.shape[1] != model.config.head_dim:
        return None  # a partial rotary: the Python layers' rotary
    weights, info = [], []
    for layer in model.layers:
        a = layer.self_attn
        lins = [_any_format(m) for m in _linears(layer)]
        norms = [getattr(layer, n).weight if hasattr(layer, n) else _NONE
                 for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                           "post_feedforward_layernorm")]
        norms += [a.q_norm.weight, a.k_norm.weight] if a.qk_norm is not None else [_NONE, _NONE]
        if None in lins or not _cpu32(norms):
            return None
        weights += norms + [w for lin in lins for w in lin]
        info.append([a.window, int(a.rotary), int(a.local_rope)])
    return FamilyLoop(kern, weights, torch.tensor(info, dtype=torch.long))
