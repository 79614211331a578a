"""Paged attention: a C++ kernel on CPU, PyTorch elsewhere (and as the kernel's reference).

Every layer first writes the step's new K/V into the paged cache (slot_mapping), then each
sequence reads its whole context back through its block table. Because all writes of a layer
happen before any read, a sequence may read blocks that another sequence of the same step is
filling (this is how n>1 samples and same-step prefix hits share prompt blocks).

On CPU every token goes to csrc/paged_attention.cpp (float32 queries), which reads the cache in
place one query row at a time: a row's result depends only on its query and its keys, so it is
the same alone or batched, with its prompt in one chunk or several, or with a prefix-cache hit.
(It is also faster here than batched matmuls for prompts: pp512 725 -> 1,024 tok/s, an
8,191-token prompt 60 -> 29 s.) Where the kernel cannot run (CUDA, no compiler) the PyTorch path:
single-token rows are grouped by context bucket (context length rounded up to a multiple of
BUCKET), each group one padded batched attention; each prompt chunk runs on its own (no query
padding). Every reduction in a group runs over the sequence's own bucket, whoever else is in the
group, so decodes are batch invariant there too; a prompt token computed in a chunk and alone
(after a prefix hit) may differ in the last bit. (PyTorch's fused SDPA picks kernels and block
sizes from the padded shapes, which is why attention is written out here.)
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
    # cache blocks in a pool -> (Hkv * B * C/block_size,) gather rows, made by its first layer
    head_blocks: dict = field(default_factory=dict)
    q_pos: torch.Tensor | None = None     # (B, Q) each query's position (-1: padding)
    window_neg: dict = field(default_factory=dict)  # sliding window -> its neg_mask


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor      # (T,) cache slot written by each new token
    groups: list[AttentionGroup]    # rows for the PyTorch path
    # every row to the C++ kernel (one query row at a time); None: the PyTorch path
    row_seq: torch.Tensor | None = None       # (T,) each row's row of block_tables
    row_ctx: torch.Tensor | None = None       # (T,) how many keys each sees (position + 1)
    block_tables: torch.Tensor | None = None  # (S, max_blocks)
    # the sliding-window layers' own pool and tables, where the model keeps one (block_manager.py)
    local: "AttentionMetadata | None" = None

    @staticmethod
    def build(seqs: list[tuple], device: torch.device, block_size: int,
              native: bool = False) -> "AttentionMetadata":
        """seqs: per sequence (first row in the flattened batch, number of new tokens, (ctx,)
        long tensor of cache slots of the whole context including the new tokens (slot =
        block * block_size + offset)).

        native: every row goes to the C++ kernel, one query row at a time, so a token's result
        is the same however the step was made up (batched, its prompt chunked, a prefix-cache
        hit, a preemption); otherwise the PyTorch path."""
        if BUCKET % block_size:
            raise ValueError(f"block_size must divide {BUCKET}")
        slot_mapping = torch.cat([slots[len(slots) - n_new:] for _, n_new, slots in seqs])
        if native:
            return _build_rows(seqs, device, block_size, slot_mapping.to(device))
        buckets: dict[tuple[int, int], list] = {}
        for i, (start, n_new, slots) in enumerate(seqs):
            # decodes share a group per context bucket; each prefill chunk gets its own group
            # (no query padding; a step rarely has more than a couple of them)
            kind = -1 if n_new == 1 else i
            key = (kind, -(-len(slots) // BUCKET) * BUCKET)
            buckets.setdefault(key, []).append((start, n_new, slots))
        groups = [_build_group(b, device, ctx_pad, block_size) for (_, ctx_pad), b in buckets.items()]
        return AttentionMetadata(slot_mapping.to(device), groups)


def _build_rows(seqs, device, block_size: int, slot_mapping: torch.Tensor) -> AttentionMetadata:
    # every new token a kernel row, in batch order: its sequence, the keys it sees
    seq, ctx = [], []
    max_blocks = max(-(-len(slots) // block_size) for _, _, slots in seqs)
    tables = torch.zeros(len(seqs), max_blocks, dtype=torch.long)
    for i, (start, n_new, slots) in enumerate(seqs):
        first = len(slots) - n_new  # position of the first new token
        seq.append(torch.full((n_new,), i))
        ctx.append(torch.arange(first + 1, first + n_new + 1))
        heads = slots[::block_size]  # the first slot of each block
        tables[i, :len(heads)] = heads // block_size
    return AttentionMetadata(slot_mapping, [], row_seq=torch.cat(seq).to(device),
                             row_ctx=torch.cat(ctx).to(device), block_tables=tables.to(device))


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
        mask=mask.unsqueeze(1).to(device), q_pos=q_pos.to(device),
        src=torch.tensor(src, dtype=torch.long, device=device),
        dst=torch.tensor(dst, dtype=torch.long, device=device))


# An int8 cache row is D int8 values then their float32 scale (4 bytes): x ~= q * scale, scale =
# max|x| / 127 per token and head (K after rotary). One tensor per cache, indexed by slot like the
# float caches: 68 bytes a row for D = 64 where float16 takes 128.
INT8_SCALE_BYTES = 4


def cache_row_bytes(dtype: torch.dtype, head_dim: int) -> int:
    """Bytes of one (token, kv head) row of a cache of this dtype."""
    if dtype == torch.int8:
        return head_dim + INT8_SCALE_BYTES
    return head_dim * torch.empty((), dtype=dtype).element_size()


def cache_row_width(dtype: torch.dtype, head_dim: int) -> int:
    """The cache tensor's last dimension."""
    return head_dim + INT8_SCALE_BYTES if dtype == torch.int8 else head_dim


def quantize_kv(x: torch.Tensor) -> torch.Tensor:
    """(..., D) float -> (..., D + 4) int8 cache rows; q = round(x * 127 / max|x|), ties to even,
    as csrc/fused_ops.cpp writes them."""
    x = x.float()
    amax = x.abs().amax(-1, keepdim=True)
    # a tensor / tensor division: a Python number / tensor is computed as number * (1 / tensor),
    # which rounds differently from C++'s 127.f / amax in a quarter of rows (and then a few
    # products land on the other side of a .5)
    inv = torch.where(amax > 0, amax.new_tensor(127.0) / amax, torch.zeros_like(amax))
    q = (x * inv).round().clamp_(-127, 127).to(torch.int8)
    return torch.cat([q, (amax / 127).view(torch.int8)], dim=-1)


def dequantize_kv(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(..., D + 4) int8 cache rows -> (..., D) of dtype."""
    scale = rows[..., -INT8_SCALE_BYTES:].contiguous().view(torch.float32)  # (..., 1)
    return (rows[..., :-INT8_SCALE_BYTES].float() * scale).to(dtype)


def write_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata) -> None:
    # k, v: (T, Hkv, D) -> the cache slots of meta.slot_mapping
    Hkv, num_blocks, block_size, W = k_cache.shape
    for x, cache in ((k, k_cache), (v, v_cache)):
        rows = quantize_kv(x) if cache.dtype == torch.int8 else x.to(cache.dtype)
        cache.view(Hkv, -1, W).index_copy_(1, meta.slot_mapping, rows.transpose(0, 1))


def _gather(cache: torch.Tensor, rows: torch.Tensor, B: int, C: int, dtype: torch.dtype) -> torch.Tensor:
    # whole blocks of each context, heads first: (Hkv, B, C, D) of dtype
    Hkv, _, block_size, W = cache.shape
    g = cache.view(-1, block_size * W).index_select(0, rows).view(Hkv, B, C, W)
    return dequantize_kv(g, dtype) if cache.dtype == torch.int8 else g.to(dtype)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    meta: AttentionMetadata, scale: float, window: int = 0, softcap: float = 0.0) -> torch.Tensor:
    # q: (T, Hq, D); caches: (Hkv, num_blocks, block_size, D), this step's k, v already written.
    # window > 0: a sliding-window layer; a query at position p sees keys p - window + 1 .. p.
    # softcap > 0 (gemma2): each scaled score s becomes softcap * tanh(s / softcap).
    # With kernel metadata (CPU, float32) csrc/paged_attention.cpp reads the cache in place.
    # Otherwise the PyTorch path, also the kernel's test reference: heads first and whole blocks
    # gathered, a context comes out as one contiguous (Hkv, B, C, D) tensor, copied in 4 KB runs,
    # that batched matmuls read in place.
    if meta.row_seq is not None:
        return kernels().paged_attention_rows(q, k_cache, v_cache, meta.row_seq, meta.row_ctx,
                                              meta.block_tables, scale, window, softcap)
    T, Hq, D = q.shape
    Hkv, num_blocks, block_size, _ = k_cache.shape  # the last dim: D, or D + 4 (int8 rows)
    out = torch.empty(T, Hq, D, dtype=q.dtype, device=q.device)
    G = Hq // Hkv  # query heads per kv head (GQA): they share one K/V read
    for g in meta.groups:
        B, Q = g.q_index.shape
        C = g.kv_blocks.shape[1] * block_size
        # query head h uses kv head h // G, so heads are grouped kv-major
        qg = q[g.q_index].view(B, Q, Hkv, G, D).permute(2, 0, 3, 1, 4).reshape(Hkv, B, G * Q, D) * scale
        if k_cache.dtype == torch.int8:  # int8 keys meet int8 queries, as in the C++ kernel
            qg = dequantize_kv(quantize_kv(qg), q.dtype)
        if num_blocks not in g.head_blocks:  # rows of the (Hkv * num_blocks, block_size * D) view
            g.head_blocks[num_blocks] = (torch.arange(Hkv, device=q.device)[:, None] * num_blocks
                                         + g.kv_blocks.view(1, -1)).view(-1)
        kg = _gather(k_cache, g.head_blocks[num_blocks], B, C, q.dtype)
        vg = _gather(v_cache, g.head_blocks[num_blocks], B, C, q.dtype)
        scores = torch.matmul(qg, kg.transpose(2, 3))          # (Hkv, B, G*Q, C)
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        if g.neg_mask is None:  # the same for every layer of the step
            g.neg_mask = (~g.mask).view(1, B, Q, C).repeat(1, 1, G, 1)  # (1, B, G*Q, C)
        neg = g.neg_mask
        if window:  # and for every windowed layer: also the keys before the window
            if window not in g.window_neg:
                early = torch.arange(C, device=q.device)[None, None, :] <= g.q_pos[:, :, None] - window
                g.window_neg[window] = g.neg_mask | early.view(1, B, Q, C).repeat(1, 1, G, 1)
            neg = g.window_neg[window]
        scores.masked_fill_(neg, float("-inf"))
        probs = scores.softmax(dim=-1)
        o = torch.matmul(probs, vg)                            # (Hkv, B, G*Q, D)
        o = o.view(Hkv, B, G, Q, D).permute(1, 3, 0, 2, 4).reshape(B * Q, Hq, D)
        out[g.dst] = o[g.src]
    return out
