"""Run-time weight quantization as a module swap: Linear -> Int8Linear after loading.

int8 weights, one scale per output channel (4x less memory than fp32). Three backends:

native (CPUs with AVX-512 VNNI; our csrc/int8_linear.cpp): each token row is quantized on its
own into two int8 parts, the second holding the first's rounding error (~15 bits together), and
the int8 x int8 sums are exact int32, so whichever loop computes them a row's result never
depends on the batch. Weights are kept in the kernel's packed layout (16-row blocks of 4-byte
groups: no horizontal sums, one pass over the weights for any number of rows); layers whose
shape does not pack keep (out, in) rows, the VNNI row loop and oneDNN's _int_mm. Perplexity of
SmolLM2-135M: +0.65% over fp32, the same as weight-only int8 (one 8-bit part: +4.4%).

fbgemm (other CPUs): int8 x uint8 -> int32 with one activation range per call, which would make
a request's output depend on the batch; so each token row is scaled to max|x| = 1 first and one
calibration row [1, -1, 0...] pins the range to [-1, 1] in every call: per-token 8-bit
activations, batch invariant, +2.6% perplexity.

reference (CUDA, or neither available): weight-only int8 in plain PyTorch.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear
from .native import kernels
from .q4 import Q4Linear, codes_from_blocks

QUANTIZATIONS = ("none", "int8", "q4_1")


def _has_avx512_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_vnni" in f.read()
    except OSError:
        return False


# fbgemm's AVX2 kernels add u8 x s8 pairs in int16, which can saturate: there activations get
# 7 bits (reduce_range). With AVX-512 VNNI the products accumulate in int32, so 8 bits are safe;
# measured here: perplexity +2.6% over fp32 with 8 bits, +10% with 7.
REDUCE_RANGE = not _has_avx512_vnni()


# Below this many tokens the VNNI row loop beats _int_mm (measured over the 121 layers of
# SmolLM2-135M, ms per step: 1 token 4.3 vs 10.2, 8 tokens 9.0 vs 11.0, 12: 13.2 vs 12.9).
GEMM_MIN_ROWS = 10


def _native():
    """The kernel module where its int8 / 4-bit fast paths run (AVX-512 VNNI), else None (fbgemm
    or PyTorch). TOKENMILL_PORTABLE_KERNELS=1 takes the kernels' portable C++ paths anyway: the
    same numbers, slowly; the tests use it to run them on every machine."""
    k = kernels()
    if k is None:
        return None
    return k if k.int8_linear_has_vnni() or os.environ.get("TOKENMILL_PORTABLE_KERNELS") == "1" else None


def _fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


BACKENDS = ("auto", "native", "fbgemm", "reference")


def pick_backend(device: torch.device) -> str:
    """auto: our kernel where the CPU has VNNI, else fbgemm on CPU, else the PyTorch path."""
    if device.type != "cpu":
        return "reference"
    if _native() is not None:
        return "native"
    return "fbgemm" if _fbgemm_available() else "reference"


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, backend: str = "auto"):
        super().__init__()
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (out,)
        q = (w / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)  # (out, in)
        self.out_features, self.in_features = w.shape
        self.register_buffer("_qweight", q, persistent=False)  # (out, in); None once packed below
        self.register_buffer("_packed", None, persistent=False)
        self.register_buffer("scale", scale.to(weight.dtype), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.backend = pick_backend(weight.device) if backend == "auto" else backend
        if self.backend == "native":
            self.native = _native()
            if self.native is None:
                raise RuntimeError("the native int8 kernel is not available on this machine")
            self._scale32 = scale.float()
            self._wsum = q.sum(dim=1, dtype=torch.int32)  # (out,), undoes the +128 shift in VNNI
            self._bias32 = torch.empty(0) if bias is None else bias.detach().float().clone()
            N, K = q.shape
            if N % 16 == 0 and K % 4 == 0:  # one layout for every batch size (int8_linear.cpp)
                self._packed = self.native.int8_pack(q)
                self._qweight = None
        elif self.backend == "fbgemm":
            torch.backends.quantized.engine = "fbgemm"
            with warnings.catch_warnings():  # deprecated API, still the way into fbgemm in 2.13
                warnings.simplefilter("ignore")
                qw = torch._make_per_channel_quantized_tensor(
                    q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
            b = None if bias is None else bias.detach().float()
            self.packed = torch.ops.quantized.linear_prepack(qw, b)
            self._calib = torch.zeros(1, self.in_features)
            self._calib[0, 0], self._calib[0, min(1, self.in_features - 1)] = 1.0, -1.0

    @property
    def qweight(self) -> torch.Tensor:
        """(out, in) int8; unpacked on demand where the kernel keeps only the packed layout."""
        if self._qweight is not None:
            return self._qweight
        N, K = self.out_features, self.in_features
        return self._packed.view(N // 16, K // 4, 16, 4).permute(0, 2, 1, 3).reshape(N, K)

    def int8_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(len(ids), in) int8 rows of the weight (an embedding lookup), from either layout."""
        if self._qweight is not None:
            return self._qweight[ids]
        K = self.in_features
        blocks = self._packed.view(-1, K // 4, 16, 4)
        return blocks[ids // 16, :, ids % 16, :].reshape(len(ids), K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "reference":
            return reference_int8_linear(x, self.qweight, self.scale, self.bias)
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()                   # (T, in)
        if self._packed is not None:
            y = self.native.int8_linear_packed(x2, self._packed, self._scale32, self._wsum, self._bias32,
                                               self.out_features)
        elif self.backend == "native":
            y = self.native.int8_linear(x2, self._qweight, self._scale32, self._wsum, self._bias32,
                                        GEMM_MIN_ROWS)
        else:
            y = self._fbgemm(x2)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _fbgemm(self, x2: torch.Tensor) -> torch.Tensor:
        row_scale = x2.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)  # (T, 1)
        xn = torch.cat([x2 / row_scale, self._calib])                   # (T+1, in), range [-1, 1]
        y = torch.ops.quantized.linear_dynamic(xn, self.packed, REDUCE_RANGE)[:-1]  # (T, out)
        if self.bias is not None:  # bias was added before the row scale came back: undo, redo
            return (y - self.bias) * row_scale + self.bias
        return y * row_scale


def _quantize_rows(x):
    amax = x.abs().amax(dim=1, keepdim=True)                                 # (M, 1)
    q = torch.clamp(torch.round(x * torch.where(amax > 0, 127.0 / amax, 0.0)), -127, 127)
    return q, amax / 127.0


def reference_w8a8_linear(x, qweight, scale, bias):
    """What the native kernel computes, in plain PyTorch (float64 keeps the integer sums exact):
    each row in two int8 parts, the second quantizing the first's rounding error."""
    q_hi, s_hi = _quantize_rows(x)
    q_lo, s_lo = _quantize_rows(x - q_hi * s_hi)
    w = qweight.double().t()
    y = (q_hi.double() @ w).float() * (s_hi * scale[None, :])
    y = y + (q_lo.double() @ w).float() * (s_lo * scale[None, :])
    return y if bias is None else y + bias


def reference_int8_linear(x, qweight, scale, bias):
    """Weight-only int8 in plain PyTorch: y = (x @ q^T) * scale + bias."""
    y = F.linear(x, qweight.to(x.dtype)) * scale.to(x.dtype)
    return y if bias is None else y + bias


class Int8Embedding(nn.Module):
    """Token embeddings read from int8 rows (one scale per row): the rows of a tied output
    layer's Int8Linear, so a tied model keeps one int8 copy of the vocabulary matrix instead of
    an fp32 one (113 MB for SmolLM2-135M) beside it."""

    def __init__(self, table: Int8Linear, dtype: torch.dtype):
        super().__init__()
        self.table, self.dtype = table, dtype  # table.qweight: (vocab, hidden) int8

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = self.table.int8_rows(flat).to(self.dtype) * self.table.scale[flat, None].to(self.dtype)
        return rows.view(*ids.shape, -1)


def _q4_linear(child: Linear):
    """A Q4Linear keeping the file's Q4_1 blocks, or None (not from Q4_1, or K % 32 != 0):
    those layers take int8."""
    blocks = child.q4_1_blocks()
    if blocks is None or child.weight.shape[1] % 32 or child.weight.device.type != "cpu":
        return None
    codes = codes_from_blocks(child.weight, *blocks)
    if codes is None:
        return None
    return Q4Linear(codes, *blocks, child.bias, _native())  # no VNNI: the PyTorch reference


def quantized_linear(child: Linear, method: str) -> nn.Module:
    """One loaded Linear in its quantized form (int8, or q4_1 where its rows came from Q4_1 blocks)."""
    q4 = _q4_linear(child) if method == "q4_1" else None
    return q4 or Int8Linear(child.weight, child.bias)


def quantize_as_loaded(model: nn.Module, method: str):
    """An on_linear callback for load_weights: each Linear is swapped for its quantized form as
    soon as all its rows (and biases) are in, so the float weights of one layer at most exist at a
    time (with a model built under weights_on_meta)."""
    def swap(name: str, module: Linear) -> None:
        if module.is_complete():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, quantized_linear(module, method))
    return swap


def quantize_model(model: nn.Module, method: str) -> nn.Module:
    """Swap every Linear for its quantized form; embeddings become int8 rows too.
    q4_1: layers loaded from GGUF Q4_1 blocks keep them; the rest (and the output layer) int8."""
    if method == "none":
        return model
    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {method!r}; supported: {', '.join(QUANTIZATIONS)}")
    if method == "q4_1" and _native() is None:
        warnings.warn("q4_1 without our AVX-512 VNNI kernel runs a slow PyTorch reference "
                      "(it dequantizes every layer on every call); int8 is the fast format here")
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Linear):
                setattr(module, child_name, quantized_linear(child, method))
    embed = model.embed_tokens.weight
    if getattr(model, "lm_head", "absent") is None:  # tied: one int8 matrix serves both ends
        model.lm_head = Int8Linear(embed, None)
        model.embed_tokens = Int8Embedding(model.lm_head, embed.dtype)
    else:
        model.embed_tokens = Int8Embedding(Int8Linear(embed, None, backend="reference"), embed.dtype)
    return model
