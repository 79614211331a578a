"""Paged attention in plain PyTorch.

Every layer first writes the step's new K/V into the paged cache (slot_mapping), then each
sequence reads its whole context back through its block table. Because all writes of a layer
happen before any read, a sequence may read blocks that another sequence of the same step is
filling (this is how n>1 samples and same-step prefix hits share prompt blocks).

Sequences are grouped by query length (decode: 1 token; prefill chunks: many) and each group
runs as one padded scaled_dot_product_attention call, so a mixed batch costs two kernel calls
per layer, not one per request.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionGroup:
    q_index: torch.Tensor   # (B, Q) rows of the flattened token batch; padding points at row 0
    kv_slots: torch.Tensor  # (B, C) cache slots of each sequence's context; padding -> slot 0
    mask: torch.Tensor      # (B, 1, Q, C) True where a query may attend to a key
    src: torch.Tensor       # (N,) valid entries of the flattened (B*Q) group output
    dst: torch.Tensor       # (N,) their rows in the flattened token batch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor      # (T,) cache slot written by each new token
    groups: list[AttentionGroup]

    @staticmethod
    def build(seqs: list[tuple[int, int, torch.Tensor]], device: torch.device,
              decode_split: bool = True) -> "AttentionMetadata":
        """seqs: per sequence (first row in the flattened batch, number of new tokens, (ctx,)
        long tensor of cache slots of the whole context including the new tokens)."""
        slot_mapping = torch.cat([slots[len(slots) - n_new:] for _, n_new, slots in seqs])
        buckets: dict[bool, list] = {}
        for s in seqs:
            buckets.setdefault(decode_split and s[1] == 1, []).append(s)
        groups = [_build_group(b, device) for b in buckets.values()]
        return AttentionMetadata(slot_mapping.to(device), groups)


def _build_group(seqs, device) -> AttentionGroup:
    B = len(seqs)
    Q = max(n for _, n, _ in seqs)
    C = max(len(slots) for _, _, slots in seqs)
    q_index = torch.zeros(B, Q, dtype=torch.long)
    kv_slots = torch.zeros(B, C, dtype=torch.long)
    q_pos = torch.full((B, Q), -1, dtype=torch.long)  # context position of each query
    ctx_len = torch.zeros(B, 1, dtype=torch.long)
    src, dst = [], []
    for b, (start, n_new, slots) in enumerate(seqs):
        ctx = len(slots)
        q_index[b, :n_new] = torch.arange(start, start + n_new)
        kv_slots[b, :ctx] = slots
        q_pos[b, :n_new] = torch.arange(ctx - n_new, ctx)
        ctx_len[b, 0] = ctx
        src.extend(range(b * Q, b * Q + n_new))
        dst.extend(range(start, start + n_new))
    k_pos = torch.arange(C)
    mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < ctx_len[:, :, None])
    mask[:, :, 0] |= q_pos < 0  # padded queries attend to key 0 so their softmax stays finite
    return AttentionGroup(
        q_index=q_index.to(device), kv_slots=kv_slots.to(device),
        mask=mask.unsqueeze(1).to(device),
        src=torch.tensor(src, dtype=torch.long, device=device),
        dst=torch.tensor(dst, dtype=torch.long, device=device))


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    # q: (T, Hq, D); k, v: (T, Hkv, D); caches: (num_blocks, block_size, Hkv, D)
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    flat_k = k_cache.view(-1, Hkv, D)
    flat_v = v_cache.view(-1, Hkv, D)
    flat_k.index_copy_(0, meta.slot_mapping, k.to(flat_k.dtype))
    flat_v.index_copy_(0, meta.slot_mapping, v.to(flat_v.dtype))
    out = torch.empty_like(q)
    for g in meta.groups:
        B, Q = g.q_index.shape
        qg = q[g.q_index].transpose(1, 2)             # (B, Hq, Q, D)
        kg = flat_k[g.kv_slots].transpose(1, 2).to(q.dtype)  # (B, Hkv, C, D)
        vg = flat_v[g.kv_slots].transpose(1, 2).to(q.dtype)
        if Hkv != Hq:
            kg = kg.repeat_interleave(Hq // Hkv, dim=1)  # (B, Hq, C, D)
            vg = vg.repeat_interleave(Hq // Hkv, dim=1)
        o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=g.mask, scale=scale)
        o = o.transpose(1, 2).reshape(B * Q, Hq, D)   # (B*Q, Hq, D)
        out[g.dst] = o[g.src]
    return out
