"""The GGUF block kernels (csrc/gguf_*.cpp) against the gguf package's dequantizers, every type.

Two references: the file's weights dequantized times the activations as the kernel quantizes them
(int8 per block; float64: should agree to float rounding), and the plain float32 product (the
kernel's only error is its int8 activations: well under 2% of the output's size)."""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from tokenmill.model.layers.gguf_linear import NATIVE_TYPES, GGUFLinear, RawMatrix
from tokenmill.model.layers.native import kernels
from tokenmill.model.loader.gguf_random import LAYOUTS, dequantize, random_blocks

pytestmark = pytest.mark.skipif(kernels() is None, reason="C++ kernels not built")


def _quantized_activations(x: torch.Tensor, block: int) -> torch.Tensor:
    """x (M, K) as the kernel sees it: per block max|x| / 127 steps, rounded to nearest even."""
    M, K = x.shape
    xb = x.double().view(M, K // block, block)
    amax = xb.abs().amax(-1, keepdim=True)
    q = torch.round(xb * torch.where(amax > 0, 127.0 / amax, 0.0)).clamp(-127, 127)
    return (q * (amax / 127.0)).view(M, K)


def _case(name, N, K, M, seed):
    rng = np.random.default_rng(seed)
    raw = random_blocks(name, N, K, rng)
    w = torch.from_numpy(dequantize(name, raw, K)).double()
    x = torch.from_numpy(rng.standard_normal((M, K), dtype=np.float32))
    return torch.from_numpy(raw), w, x


@pytest.mark.parametrize("name", sorted(NATIVE_TYPES))
@pytest.mark.parametrize("M", [1, 3, 9])  # 9: the VNNI tiles' groups of 4 rows and a remainder
def test_kernel_matches_dequantized_reference(name, M):
    block = LAYOUTS[name][0]
    K = 2 * 256 if block == 256 else (3 * 32 if block == 32 else 77)  # odd widths where allowed
    N = 37  # not a multiple of the task's 16 rows
    raw, w, x = _case(name, N, K, M, seed=M)
    code = int(GGMLQuantizationType[name])
    fp = x.double() @ w.t()
    xq = x.double() if block == 1 else _quantized_activations(x, 256 if block == 256 else 32)
    exact = xq @ w.t()
    ys = {}
    for path in (0, 1, 2):  # the fastest here (AVX-512 VNNI tiles where the CPU has them), portable, AVX2
        y = ys[path] = kernels().gguf_linear(x, [raw], [code], torch.empty(0), path).double()
        assert y.shape == (M, N)
        scale = fp.abs().max()
        assert (y - exact).abs().max() <= 2e-5 * scale, (name, path)
        assert (y - fp).norm() <= 0.02 * fp.norm(), (name, path)
    if block > 1:  # the VNNI and AVX2 tiles and rows take the portable path's float steps: bit for bit
        assert torch.equal(ys[0], ys[1]) and torch.equal(ys[2], ys[1]), name


@pytest.mark.parametrize("name", sorted(NATIVE_TYPES))
def test_dequantize_rows_is_the_packages(name):
    block = LAYOUTS[name][0]
    K = 256 if block == 256 else 64
    raw, w, _ = _case(name, 20, K, 1, seed=3)
    ids = torch.tensor([0, 19, 7, 7, 3])
    rows = kernels().gguf_dequantize_rows(raw, int(GGMLQuantizationType[name]), ids, K)
    assert torch.equal(rows.double(), w[ids])


def test_mixed_parts_bias_and_batch_invariance():
    """A fused layer of three parts of different types (as a Q4_K_M file's q/k/v can be): every
    row's output is the same whether it runs alone or among 9 rows (the kernel groups 4)."""
    rng = np.random.default_rng(7)
    K, sizes = 512, {"Q4_K": 32, "Q6_K": 16, "Q8_0": 16}
    layer = GGUFLinear(K, sum(sizes.values()), bias=True)
    layer.bias.data = torch.randn(layer.out_features)
    start, ws = 0, []
    for name, n in sizes.items():
        raw = random_blocks(name, n, K, rng)
        layer.load_part(start, RawMatrix(int(GGMLQuantizationType[name]), n, K, torch.from_numpy(raw)))
        ws.append(torch.from_numpy(dequantize(name, raw, K)))
        start += n
    assert layer.is_complete() and layer.type_names == ["Q4_K", "Q6_K", "Q8_0"]
    x = torch.randn(9, K)
    y = layer(x)
    ref = x @ torch.cat(ws).t() + layer.bias
    assert (y - ref).norm() <= 0.02 * ref.norm()
    for i in range(9):
        assert torch.equal(layer(x[i:i + 1])[0], y[i])


def test_long_prompts_run_in_chunks():
    """A prompt longer than one chunk of activation rows (the kernels run a long prompt through
    the tiles a chunk at a time, here 64 rows of K = 8192) gives the portable path's numbers, and
    each row those it gets alone."""
    rng = np.random.default_rng(11)
    K = 8192
    parts = [torch.from_numpy(random_blocks(name, 8, K, rng)) for name in ("Q4_K", "Q8_0")]
    types = [int(GGMLQuantizationType[name]) for name in ("Q4_K", "Q8_0")]
    bias = torch.randn(16)
    x = torch.randn(150, K)
    y = kernels().gguf_linear(x, parts, types, bias, False)
    assert torch.equal(y, kernels().gguf_linear(x, parts, types, bias, True))
    for i in (0, 63, 64, 149):
        assert torch.equal(kernels().gguf_linear(x[i:i + 1], parts, types, bias, False)[0], y[i])


def test_bad_parts_are_refused():
    raw = torch.zeros(4, 144, dtype=torch.uint8)
    x = torch.randn(2, 256)
    with pytest.raises(RuntimeError, match="bytes a row"):
        kernels().gguf_linear(x, [raw[:, :100].contiguous()], [12], torch.empty(0), False)
    with pytest.raises(RuntimeError, match="not run natively"):
        kernels().gguf_linear(x, [raw], [10], torch.empty(0), False)  # Q2_K
    with pytest.raises(RuntimeError, match="out of range"):
        kernels().gguf_dequantize_rows(raw, 12, torch.tensor([4]), 256)
