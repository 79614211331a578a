"""The fused C++ row ops (csrc/fused_ops.cpp) against the PyTorch code they replace."""
import pytest
import torch
import torch.nn.functional as F

from tokenmill.model.layers.attention import AttentionMetadata, write_cache
from tokenmill.model.layers.native import kernels
from tokenmill.model.layers.norm import RMSNorm
from tokenmill.model.layers.rope import RotaryEmbedding

pytestmark = pytest.mark.skipif(kernels() is None, reason="the C++ kernels did not build")


def test_rms_norm_and_fused_residual_add():
    torch.manual_seed(0)
    norm = RMSNorm(576, 1e-5)
    norm.weight.data.normal_(1, 0.3)
    x, res = torch.randn(7, 576), torch.randn(7, 576) * 10
    ref = norm._norm(x)
    torch.testing.assert_close(norm(x), ref, rtol=1e-6, atol=1e-6)
    out, new_res = norm(x, res.clone())
    assert torch.equal(new_res, res + x)  # the add is the same float op
    torch.testing.assert_close(out, norm._norm(res + x), rtol=1e-6, atol=1e-6)
    for i in range(7):  # rows alone = rows batched
        assert torch.equal(norm(x[i:i + 1]), norm(x)[i:i + 1])


def test_head_norms_in_place_equal_rms_norm_rows():
    """q and k norms of qwen3 / gemma3 normed in place inside qkv: rms_norm's numbers for the
    (T * heads, D) rows, v untouched."""
    torch.manual_seed(0)
    T, Hq, Hkv, D = 5, 6, 2, 64
    qkv = torch.randn(T, (Hq + 2 * Hkv) * D) * 3
    wq, wk = torch.randn(D), torch.randn(D)
    q, k, v = qkv.split([Hq * D, Hkv * D, Hkv * D], dim=-1)
    ref_q = kernels().rms_norm(q.reshape(-1, D), wq, 1e-6).view(T, -1)
    ref_k = kernels().rms_norm(k.reshape(-1, D), wk, 1e-6).view(T, -1)
    ref_v = v.clone()
    kernels().rms_norm_heads_(qkv, wq, wk, Hq, Hkv, 1e-6)
    assert torch.equal(qkv[:, :Hq * D], ref_q) and torch.equal(qkv[:, Hq * D:(Hq + Hkv) * D], ref_k)
    assert torch.equal(qkv[:, (Hq + Hkv) * D:], ref_v)


def test_silu_mul():
    torch.manual_seed(0)
    gate_up = torch.randn(5, 2 * 1536) * 4
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(kernels().silu_mul(gate_up), F.silu(gate) * up, rtol=1e-6, atol=1e-6)


def test_gelu_mul():
    """GeGLU's gelu (tanh form) times up in one pass: as PyTorch's to float32 rounding, over the
    range where exp saturates too, for a row length that leaves a scalar tail."""
    torch.manual_seed(0)
    gate_up = torch.randn(5, 2 * 1027) * 4
    gate_up[0, :12] = torch.tensor([-100., -30., -10., -1e-3, 0., 1e-3, 10., 30., 100., -5.5, 5.5, 2.])
    gate, up = gate_up.chunk(2, dim=-1)
    got = kernels().gelu_mul(gate_up)
    torch.testing.assert_close(got, F.gelu(gate, approximate="tanh") * up, rtol=2e-6, atol=1e-6)
    for i in range(5):  # rows alone = rows batched
        assert torch.equal(kernels().gelu_mul(gate_up[i:i + 1]), got[i:i + 1])


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_rope_and_cache_equal_the_pytorch_path(cache_dtype):
    torch.manual_seed(0)
    Hq, Hkv, D, NB, BS = 9, 3, 64, 8, 16
    rope = RotaryEmbedding(D, 512, 10000.0)
    T = 11
    qkv = torch.randn(T, (Hq + 2 * Hkv) * D)
    positions = torch.randint(0, 512, (T,))
    slots = torch.randperm(NB * BS)[:T]
    meta = AttentionMetadata(slot_mapping=slots, groups=[])
    kc = torch.zeros(Hkv, NB, BS, D, dtype=cache_dtype)
    vc = torch.zeros(Hkv, NB, BS, D, dtype=cache_dtype)
    q, k, v = qkv.split((Hq * D, Hkv * D, Hkv * D), dim=-1)
    q_ref, k_ref = rope(positions, q.reshape(T, Hq, D), k.reshape(T, Hkv, D))
    kc_ref, vc_ref = kc.clone(), vc.clone()
    write_cache(k_ref, v.reshape(T, Hkv, D), kc_ref, vc_ref, meta)
    kernels().rope_and_cache(qkv, positions, rope.cos, rope.sin, kc, vc, slots, Hq, Hkv)
    assert torch.equal(qkv[:, :Hq * D].reshape(T, Hq, D), q_ref)  # bitwise: same products, one add
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
    with pytest.raises(RuntimeError, match="slot out of range"):
        kernels().rope_and_cache(qkv, positions, rope.cos, rope.sin, kc, vc, slots + NB * BS, Hq, Hkv)
