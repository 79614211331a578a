"""The C++ paged-attention kernel against the PyTorch path, and its batch invariance."""
import pytest
import torch

from tokenmill.model.layers.attention import (AttentionMetadata, dequantize_kv, paged_attention,
                                              quantize_kv, write_cache)
from tokenmill.model.layers.native import kernels

H, HKV, D, BS, NB = 9, 3, 64, 16, 96


def setup(seqs_spec, seed=0, native=True):
    """seqs_spec: [(context length, new tokens)]. native: the kernel takes every row, else the
    PyTorch path. Returns q, k, v, caches, metadata."""
    g = torch.Generator().manual_seed(seed)
    kc = torch.randn(HKV, NB, BS, D, generator=g)
    vc = torch.randn(HKV, NB, BS, D, generator=g)
    perm = torch.randperm(NB, generator=g)
    seqs, row, used = [], 0, 0
    for ctx, n in seqs_spec:
        nblk = -(-ctx // BS)
        blocks = perm[used:used + nblk]
        used += nblk
        seqs.append((row, n, (blocks[:, None] * BS + torch.arange(BS)).flatten()[:ctx]))
        row += n
    T = row
    q = torch.randn(T, H, D, generator=g)
    k = torch.randn(T, HKV, D, generator=g)
    v = torch.randn(T, HKV, D, generator=g)
    return q, k, v, kc, vc, AttentionMetadata.build(seqs, torch.device("cpu"), BS, native)


@pytest.fixture(params=["best", "portable"])
def path(request):
    """The machine's best vector path (AVX-512 or AVX2), then the portable loop every CPU has."""
    prev = kernels().attention_portable_only(request.param == "portable")
    yield request.param
    kernels().attention_portable_only(prev)


def attend(q, k, v, kc, vc, meta, scale, window=0):
    write_cache(k, v, kc, vc, meta)
    return paged_attention(q, kc, vc, meta, scale, window)


def test_kernel_is_built():
    assert kernels() is not None, "the C++ kernel did not build (is a C++ compiler installed?)"


@pytest.mark.parametrize("spec", [[(1, 1)], [(40, 1), (300, 1), (17, 17)], [(100, 30), (5, 1), (260, 260), (129, 1)]])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16, torch.int8])
def test_kernel_matches_pytorch_path(spec, cache_dtype, path):
    q, k, v, kc, vc, meta = setup(spec)
    if cache_dtype == torch.int8:
        kc, vc = quantize_kv(kc), quantize_kv(vc)
    else:
        kc, vc = kc.to(cache_dtype), vc.to(cache_dtype)
    assert meta.row_seq is not None and not meta.groups  # all rows to the kernel
    got = attend(q, k, v, kc.clone(), vc.clone(), meta, D ** -0.5)
    _, _, _, _, _, ref_meta = setup(spec, native=False)
    assert ref_meta.row_seq is None
    ref = attend(q, k, v, kc.clone(), vc.clone(), ref_meta, D ** -0.5)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [0, 70])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16, torch.int8])
def test_kernel_rows_do_not_depend_on_the_batch(cache_dtype, window, path):
    # each token alone (its own context, the same cache) equals its row in a batch that mixes
    # decodes and chunks of several tokens: how a prefix-cache hit or a chunked prompt differs.
    # A chunk's rows share each key and value read in groups of 8 (one crosses the 256-key chunk
    # edge, one group sees three chunks); alone, a row reads them for itself. With a window, rows
    # of a group start their keys at different places in a chunk.
    spec = [(40, 1), (300, 1), (100, 30), (77, 1), (270, 20), (530, 3)]
    q, k, v, kc, vc, meta = setup(spec, seed=1)
    if cache_dtype == torch.int8:
        kc, vc = quantize_kv(kc), quantize_kv(vc)
    else:
        kc, vc = kc.to(cache_dtype), vc.to(cache_dtype)
    batched = attend(q, k, v, kc, vc, meta, 0.125, window)
    for row in range(q.shape[0]):
        table = meta.block_tables[int(meta.row_seq[row])]
        slots = (table[:, None] * BS + torch.arange(BS)).flatten()[:int(meta.row_ctx[row])]
        alone_meta = AttentionMetadata.build([(0, 1, slots)], torch.device("cpu"), BS, True)
        alone = attend(q[row:row + 1], k[row:row + 1], v[row:row + 1], kc, vc, alone_meta, 0.125, window)
        assert torch.equal(alone, batched[row:row + 1])


def test_query_rows_may_be_apart():
    """q as a view into qkv rows (the family loop passes it so, without a copy): the same output."""
    q, k, v, kc, vc, meta = setup([(100, 30), (5, 1)], seed=2)
    write_cache(k, v, kc, vc, meta)
    qkv = torch.cat([q.reshape(q.shape[0], -1), torch.randn(q.shape[0], 2 * HKV * D)], dim=-1)
    view = qkv[:, :H * D].view(q.shape[0], H, D)
    assert not view.is_contiguous()
    assert torch.equal(paged_attention(view, kc, vc, meta, 0.125), paged_attention(q, kc, vc, meta, 0.125))


def _dense_window_reference(q, kc, vc, meta, scale, window, softcap=0.0):
    """Each row by hand: softmax over the last `window` keys of its context (scores soft-capped)."""
    out = torch.empty_like(q)
    G = q.shape[1] // kc.shape[0]
    for row in range(q.shape[0]):
        table = meta.block_tables[int(meta.row_seq[row])]
        ctx = int(meta.row_ctx[row])
        slots = (table[:, None] * BS + torch.arange(BS)).flatten()[max(0, ctx - window):ctx]
        keys = kc.view(kc.shape[0], -1, D)[:, slots].float()     # (Hkv, n, D)
        vals = vc.view(vc.shape[0], -1, D)[:, slots].float()
        for h in range(q.shape[1]):
            scores = keys[h // G] @ q[row, h] * scale
            if softcap:
                scores = torch.tanh(scores / softcap) * softcap
            p = torch.softmax(scores, dim=0)
            out[row, h] = p @ vals[h // G]
    return out


@pytest.mark.parametrize("window", [1, 16, 100, 256, 300, 5000])
def test_a_sliding_window_sees_only_its_last_keys(window, path):
    # chunks of prompt rows whose windows start in different 256-key chunks, decodes short and
    # long, the window shorter and longer than the context
    spec = [(40, 1), (400, 1), (100, 30), (530, 20), (260, 260)]
    q, k, v, kc, vc, meta = setup(spec, seed=2)
    write_cache(k, v, kc, vc, meta)
    got = paged_attention(q, kc, vc, meta, 0.125, window)
    torch.testing.assert_close(got, _dense_window_reference(q, kc, vc, meta, 0.125, window), rtol=1e-4, atol=1e-4)
    _, _, _, _, _, ref_meta = setup(spec, seed=2, native=False)
    torch.testing.assert_close(paged_attention(q, kc, vc, ref_meta, 0.125, window), got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16, torch.int8])
@pytest.mark.parametrize("window", [0, 100])
def test_soft_capped_scores(window, cache_dtype, path):
    # gemma2: each score s becomes c * tanh(s / c); a cap of 0.5 bends every score here
    spec = [(40, 1), (400, 1), (100, 30), (260, 20)]
    q, k, v, kc, vc, meta = setup(spec, seed=3)
    write_cache(k, v, kc, vc, meta)
    if cache_dtype == torch.int8:
        kc, vc = quantize_kv(kc), quantize_kv(vc)
    else:
        kc, vc = kc.to(cache_dtype), vc.to(cache_dtype)
    got = paged_attention(q, kc, vc, meta, 0.125, window, softcap=0.5)
    ref_k = dequantize_kv(kc, torch.float32) if cache_dtype == torch.int8 else kc.float()
    ref_v = dequantize_kv(vc, torch.float32) if cache_dtype == torch.int8 else vc.float()
    want = _dense_window_reference(q, ref_k, ref_v, meta, 0.125, window or 10**6, softcap=0.5)
    tol = 2e-2 if cache_dtype == torch.int8 else 1e-4  # int8 queries meet int8 keys in the kernel
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    uncapped = _dense_window_reference(q, ref_k, ref_v, meta, 0.125, window or 10**6)
    assert (got - uncapped).abs().max() > 10 * tol
    _, _, _, _, _, ref_meta = setup(spec, seed=3, native=False)
    torch.testing.assert_close(paged_attention(q, kc, vc, ref_meta, 0.125, window, softcap=0.5), got,
                               rtol=tol, atol=tol)


def test_every_row_goes_to_the_kernel():
    meta = AttentionMetadata.build([(0, 10, torch.arange(40)), (10, 1, torch.arange(48, 60))],
                                   torch.device("cpu"), BS, native=True)
    assert not meta.groups
    assert meta.row_seq.tolist() == [0] * 10 + [1]
    assert meta.row_ctx.tolist() == list(range(31, 41)) + [12]
    assert meta.block_tables.tolist() == [[0, 1, 2], [3, 0, 0]]


def test_int8_rows_round_trip():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, D, generator=g) * torch.tensor([0.01, 1.0, 40.0])[None, :, None]
    x[0, 0] = 0  # an all-zero row: scale 0, no division by zero
    rows = quantize_kv(x)
    assert rows.shape == (5, 3, D + 4) and rows.dtype == torch.int8
    back = dequantize_kv(rows, torch.float32)
    amax = x.abs().amax(-1, keepdim=True)
    assert torch.all((back - x).abs() <= amax / 254 * (1 + 1e-5))  # half a step of max|x| / 127
    assert torch.equal(back[0, 0], torch.zeros(D))


def test_int8_rows_written_by_the_kernel_equal_pytorch():
    # rope_and_cache (C++) and write_cache (PyTorch, also the CUDA path) store the same bytes
    from tokenmill.model.layers.rope import RotaryEmbedding
    g = torch.Generator().manual_seed(4)
    T = 7
    qkv = torch.randn(T, (H + 2 * HKV) * D, generator=g) * 3
    pos = torch.arange(20, 20 + T)
    rope = RotaryEmbedding(D, 256, 10000.0)
    slots = torch.randperm(NB * BS, generator=g)[:T]
    meta = AttentionMetadata(slots, [])
    kc = torch.zeros(HKV, NB, BS, D + 4, dtype=torch.int8)
    vc = kc.clone()
    ref = qkv.clone()
    kernels().rope_and_cache(qkv, pos, rope.cos, rope.sin, kc, vc, slots, H, HKV)
    q, k, v = ref.split([H * D, HKV * D, HKV * D], dim=-1)
    q, k = rope(pos, q.reshape(T, H, D), k.reshape(T, HKV, D))
    kr, vr = torch.zeros_like(kc), torch.zeros_like(vc)
    write_cache(k, v.reshape(T, HKV, D), kr, vr, meta)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)


def test_int8_cache_holds_more_tokens_and_scores_prompts_like_float16(tiny_llama_dir):
    # the same memory budget holds 2 D / (D + 4) times the tokens; the prompt's logprobs (read
    # back through the cache by every layer) stay close to float16's
    from tokenmill import LLM, SamplingParams
    runs = {}
    for dtype in ("float16", "int8"):
        # float weights: only the KV format differs (int8 weights without VNNI take fbgemm, whose
        # 7-bit activations turn the two formats' small differences into noise of their own)
        llm = LLM(tiny_llama_dir, quantization="none", kv_cache_dtype=dtype, kv_cache_memory_gib=0.01,
                  show_progress=False)
        runner = llm.engine.runner
        assert runner.kv_dtype == getattr(torch, dtype)
        d = runner.model_config.head_dim
        out = llm.generate(["the quick brown fox jumps over the lazy dog " * 3],
                           SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
        runs[dtype] = (runner.num_blocks, d, [p[0] for p in out.prompt_logprobs[1:]])
    (n16, d, lp16), (n8, _, lp8) = runs["float16"], runs["int8"]
    assert abs(n8 / n16 - 2 * d / (d + 4)) < 0.02
    diff = (torch.tensor(lp8) - torch.tensor(lp16)).abs()
    # random weights amplify the rounding more than a trained model (the perplexity numbers are
    # measured on SmolLM2); a wrong scale or row layout moves logprobs by whole units
    assert diff.mean() < 0.1 and diff.max() < 0.5, diff
