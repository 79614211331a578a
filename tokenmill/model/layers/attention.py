"""Paged attention: a C++ kernel for generated tokens, PyTorch for prompt chunks.

Every layer first writes the step's new K/V into the paged cache (slot_mapping), then each
sequence reads its whole context back through its block table. Because all writes of a layer
happen before any read, a sequence may read blocks that another sequence of the same step is
filling (this is how n>1 samples and same-step prefix hits share prompt blocks).

Tokens past the prompt go to csrc/paged_attention.cpp (CPU, float32), which reads the cache in
place one query row at a time. Prompt chunks (and every token where the kernel cannot run) take
the PyTorch path: single-token rows are grouped by context bucket (context length rounded up to
a multiple of BUCKET), each group one padded batched attention; each prompt chunk runs on its
own (no query padding). A step costs a few kernel calls per layer, not one per request.

Batch invariance: a sequence's result must not depend on what else is in the batch (same
greedy tokens alone or batched; int8 activation rounding would amplify any drift). Every
reduction in a group runs over the group's context length, and that length is the sequence's
own bucket, whoever else is in the group; so the reductions have the same shape alone or
batched. (PyTorch's fused SDPA picks kernels and block sizes from the padded shapes, which is
why attention is written out here.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .native import kernels


BUCKET = 128  # context lengths are padded to a multiple of this (measured: 128 beats 256)


@dataclass
class AttentionGroup:
    q_index: torch.Tensor   # (B, Q) rows of the flattened token batch; padding points at row 0
    kv_blocks: torch.Tensor  # (B, C / block_size) cache blocks of each context; padding -> block 0
    mask: torch.Tensor      # (B, 1, Q, C) True where a query may attend to a key
    src: torch.Tensor       # (N,) valid entries of the flattened (B*Q) group output
    dst: torch.Tensor       # (N,) their rows in the flattened token batch
    neg_mask: torch.Tensor | None = None  # (1, B, G*Q, C) ~mask for the G heads, made by layer 0
    head_blocks: torch.Tensor | None = None  # (Hkv * B * C/block_size,) gather rows, made by layer 0


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor      # (T,) cache slot written by each new token
    groups: list[AttentionGroup]    # rows for the PyTorch path
    # rows for the C++ kernel (one query row at a time); None: no kernel this step
    rows: torch.Tensor | None = None          # (R,) their place in the batch
    row_seq: torch.Tensor | None = None       # (R,) their row of block_tables
    row_ctx: torch.Tensor | None = None       # (R,) how many keys each sees (position + 1)
    block_tables: torch.Tensor | None = None  # (S, max_blocks)

    @staticmethod
    def build(seqs: list[tuple], device: torch.device, block_size: int,
              native: bool = False) -> "AttentionMetadata":
        """seqs: per sequence (first row in the flattened batch, number of new tokens, (ctx,)
        long tensor of cache slots of the whole context including the new tokens (slot =
        block * block_size + offset), and optionally the prompt length).

        native: the kernel takes every token past the prompt (decodes, and generated tokens
        recomputed after a preemption); prompt tokens take the PyTorch path. Each token thus
        goes the same way however the batch is made up, chunked or preempted."""
        if BUCKET % block_size:
            raise ValueError(f"block_size must divide {BUCKET}")
        slot_mapping = torch.cat([s[2][len(s[2]) - s[1]:] for s in seqs])
        buckets: dict[tuple[int, int], list] = {}
        kernel_rows, kernel_seqs = [], []
        for i, (start, n_new, slots, *rest) in enumerate(seqs):
            first = len(slots) - n_new  # position of the first new token
            n_torch = n_new
            if native:
                num_prompt = rest[0] if rest else len(slots)
                n_torch = min(n_new, max(0, num_prompt - first))
                if n_torch < n_new:
                    kernel_rows += [(start + r, len(kernel_seqs), first + r + 1) for r in range(n_torch, n_new)]
                    kernel_seqs.append(slots)
            if n_torch == 0:
                continue
            ctx_slots = slots[:first + n_torch]
            # decodes share a group per context bucket; each prefill chunk gets its own group
            # (no query padding; a step rarely has more than a couple of them)
            kind = -1 if n_torch == 1 else i
            key = (kind, -(-len(ctx_slots) // BUCKET) * BUCKET)
            buckets.setdefault(key, []).append((start, n_torch, ctx_slots))
        groups = [_build_group(b, device, ctx_pad, block_size) for (_, ctx_pad), b in buckets.items()]
        meta = AttentionMetadata(slot_mapping.to(device), groups)
        if kernel_rows:
            max_blocks = max(-(-len(sl) // block_size) for sl in kernel_seqs)
            tables = torch.zeros(len(kernel_seqs), max_blocks, dtype=torch.long)
            for i, sl in enumerate(kernel_seqs):
                heads = sl[::block_size]  # the first slot of each block
                tables[i, :len(heads)] = heads // block_size
            rows, seq, ctx = zip(*kernel_rows)
            meta.rows = torch.tensor(rows, device=device)
            meta.row_seq = torch.tensor(seq, device=device)
            meta.row_ctx = torch.tensor(ctx, device=device)
            meta.block_tables = tables.to(device)
        return meta


def _build_group(seqs, device, C: int, block_size: int) -> AttentionGroup:
    B = len(seqs)
    Q = max(n for _, n, _ in seqs)
    q_index = torch.zeros(B, Q, dtype=torch.long)
    kv_blocks = torch.zeros(B, C // block_size, dtype=torch.long)
    q_pos = torch.full((B, Q), -1, dtype=torch.long)  # context position of each query
    ctx_len = torch.zeros(B, 1, dtype=torch.long)
    src, dst = [], []
    for b, (start, n_new, slots) in enumerate(seqs):
        ctx = len(slots)
        q_index[b, :n_new] = torch.arange(start, start + n_new)
        first = slots[::block_size]  # the first slot of each block
        kv_blocks[b, :len(first)] = first // block_size
        q_pos[b, :n_new] = torch.arange(ctx - n_new, ctx)
        ctx_len[b, 0] = ctx
        src.extend(range(b * Q, b * Q + n_new))
        dst.extend(range(start, start + n_new))
    k_pos = torch.arange(C)
    mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < ctx_len[:, :, None])
    mask[:, :, 0] |= q_pos < 0  # padded queries attend to key 0 so their softmax stays finite
    return AttentionGroup(
        q_index=q_index.to(device), kv_blocks=kv_blocks.to(device),
        mask=mask.unsqueeze(1).to(device),
        src=torch.tensor(src, dtype=torch.long, device=device),
        dst=torch.tensor(dst, dtype=torch.long, device=device))


def write_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata) -> None:
    # k, v: (T, Hkv, D) -> the cache slots of meta.slot_mapping
    Hkv, num_blocks, block_size, D = k_cache.shape
    k_cache.view(Hkv, -1, D).index_copy_(1, meta.slot_mapping, k.transpose(0, 1).to(k_cache.dtype))
    v_cache.view(Hkv, -1, D).index_copy_(1, meta.slot_mapping, v.transpose(0, 1).to(v_cache.dtype))


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float) -> torch.Tensor:
    # q: (T, Hq, D); caches: (Hkv, num_blocks, block_size, D), this step's k, v already written.
    # Rows that the metadata gives to the C++ kernel (csrc/paged_attention.cpp: generated tokens,
    # CPU, float32) read the cache in place; prompt chunks (where batched matmuls win) and
    # everything on other devices take the PyTorch path, also the kernel's test reference.
    # Heads first and whole blocks gathered: a context comes out as one contiguous
    # (Hkv, B, C, D) tensor, copied in 4 KB runs, that batched matmuls read in place.
    T, Hq, D = q.shape
    Hkv, num_blocks, block_size, _ = k_cache.shape
    out = torch.empty(T, Hq, D, dtype=q.dtype, device=q.device)
    if meta.rows is not None:  # generated tokens: the kernel reads the cache in place
        out[meta.rows] = kernels().paged_attention_rows(q[meta.rows], k_cache, v_cache, meta.row_seq,
                                                        meta.row_ctx, meta.block_tables, scale)
    G = Hq // Hkv  # query heads per kv head (GQA): they share one K/V read
    for g in meta.groups:
        B, Q = g.q_index.shape
        C = g.kv_blocks.shape[1] * block_size
        # query head h uses kv head h // G, so heads are grouped kv-major
        qg = q[g.q_index].view(B, Q, Hkv, G, D).permute(2, 0, 3, 1, 4).reshape(Hkv, B, G * Q, D) * scale
        if g.head_blocks is None:  # rows of the (Hkv * num_blocks, block_size * D) view
            g.head_blocks = (torch.arange(Hkv, device=q.device)[:, None] * num_blocks
                             + g.kv_blocks.view(1, -1)).view(-1)
        kg = k_cache.view(-1, block_size * D).index_select(0, g.head_blocks).view(Hkv, B, C, D).to(q.dtype)
        vg = v_cache.view(-1, block_size * D).index_select(0, g.head_blocks).view(Hkv, B, C, D).to(q.dtype)
        scores = torch.matmul(qg, kg.transpose(2, 3))          # (Hkv, B, G*Q, C)
        if g.neg_mask is None:  # the same for every layer of the step
            g.neg_mask = (~g.mask).view(1, B, Q, C).repeat(1, 1, G, 1)  # (1, B, G*Q, C)
        scores.masked_fill_(g.neg_mask, float("-inf"))
        probs = scores.softmax(dim=-1)
        o = torch.matmul(probs, vg)                            # (Hkv, B, G*Q, D)
        o = o.view(Hkv, B, G, Q, D).permute(1, 3, 0, 2, 4).reshape(B * Q, Hq, D)
        out[g.dst] = o[g.src]
    return out
