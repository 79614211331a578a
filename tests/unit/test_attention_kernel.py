"""The C++ paged-attention kernel against the PyTorch path, and its batch invariance."""
import pytest
import torch

from tokenmill.model.layers.attention import AttentionMetadata, paged_attention, write_cache
from tokenmill.model.layers.native import kernels

H, HKV, D, BS, NB = 9, 3, 64, 16, 64


def setup(seqs_spec, seed=0, native=True):
    """seqs_spec: [(context length, new tokens)]; every new token counts as generated (prompt
    length 0), so the kernel takes them all. Returns q, k, v, caches, metadata."""
    g = torch.Generator().manual_seed(seed)
    kc = torch.randn(HKV, NB, BS, D, generator=g)
    vc = torch.randn(HKV, NB, BS, D, generator=g)
    perm = torch.randperm(NB, generator=g)
    seqs, row, used = [], 0, 0
    for ctx, n in seqs_spec:
        nblk = -(-ctx // BS)
        blocks = perm[used:used + nblk]
        used += nblk
        seqs.append((row, n, (blocks[:, None] * BS + torch.arange(BS)).flatten()[:ctx], 0))
        row += n
    T = row
    q = torch.randn(T, H, D, generator=g)
    k = torch.randn(T, HKV, D, generator=g)
    v = torch.randn(T, HKV, D, generator=g)
    return q, k, v, kc, vc, AttentionMetadata.build(seqs, torch.device("cpu"), BS, native)


def attend(q, k, v, kc, vc, meta, scale):
    write_cache(k, v, kc, vc, meta)
    return paged_attention(q, kc, vc, meta, scale)


def test_kernel_is_built():
    assert kernels() is not None, "the C++ kernel did not build (is a C++ compiler installed?)"


@pytest.mark.parametrize("spec", [[(1, 1)], [(40, 1), (300, 1), (17, 17)], [(100, 30), (5, 1), (260, 260), (129, 1)]])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_kernel_matches_pytorch_path(spec, cache_dtype):
    q, k, v, kc, vc, meta = setup(spec)
    kc, vc = kc.to(cache_dtype), vc.to(cache_dtype)
    assert meta.rows is not None and not meta.groups  # all rows to the kernel
    got = attend(q, k, v, kc.clone(), vc.clone(), meta, D ** -0.5)
    _, _, _, _, _, ref_meta = setup(spec, native=False)
    assert ref_meta.rows is None
    ref = attend(q, k, v, kc.clone(), vc.clone(), ref_meta, D ** -0.5)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_kernel_rows_do_not_depend_on_the_batch():
    spec = [(40, 1), (300, 1), (100, 30), (77, 1)]
    q, k, v, kc, vc, meta = setup(spec, seed=1)
    batched = attend(q, k, v, kc, vc, meta, 0.125)
    for i, row in enumerate(meta.rows.tolist()):  # each token alone, same cache contents
        table = meta.block_tables[int(meta.row_seq[i])]
        slots = (table[:, None] * BS + torch.arange(BS)).flatten()[:int(meta.row_ctx[i])]
        alone_meta = AttentionMetadata.build([(0, 1, slots, 0)], torch.device("cpu"), BS, True)
        alone = attend(q[row:row + 1], k[row:row + 1], v[row:row + 1], kc, vc, alone_meta, 0.125)
        assert torch.equal(alone, batched[row:row + 1])


def test_prompt_rows_take_the_pytorch_path():
    slots = torch.arange(40)
    meta = AttentionMetadata.build([(0, 10, slots, 35), (10, 1, torch.arange(48, 60), 5)],
                                   torch.device("cpu"), BS, native=True)
    # first sequence: positions 30..39, prompt ends at 35 -> 5 rows each way
    assert meta.rows.tolist() == [5, 6, 7, 8, 9, 10]
    assert meta.row_ctx.tolist() == [36, 37, 38, 39, 40, 12]
    assert [(g.q_index.shape, g.kv_blocks.shape) for g in meta.groups] == [((1, 5), (1, 128 // BS))]
