"""Run-time weight quantization as a module swap: Linear -> Int8Linear after loading.

int8: weights int8 with one scale per output channel. On CPU the matmul runs in fbgemm
(int8 x uint8 -> int32, AVX2), 3-4x faster than fp32 F.linear here. fbgemm quantizes the
activations with one range per call, which would make a request's output depend on the other
requests in the batch; so we scale each token row to max|x| = 1 first and append one
calibration row [1, -1, 0...] that pins the range to [-1, 1] in every call. Activations are then
quantized per token, and each row's result is independent of the batch (bitwise).
Quality on the bundled model (tokenmill eval perplexity): weights alone at int8 cost +0.65%
perplexity; fbgemm's 8-bit activations bring it to +2.6%.

Elsewhere (CUDA, or no fbgemm) the same int8 weights run through a pure-PyTorch weight-only
path, which the tests also use as the reference.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear

QUANTIZATIONS = ("none", "int8")


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


def _fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, use_fbgemm: bool):
        super().__init__()
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (out,)
        q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)  # (out, in)
        self.out_features, self.in_features = w.shape
        self.register_buffer("qweight", q, persistent=False)
        self.register_buffer("scale", scale.to(weight.dtype), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.use_fbgemm = use_fbgemm and weight.device.type == "cpu" and _fbgemm_available()
        if self.use_fbgemm:
            torch.backends.quantized.engine = "fbgemm"
            with warnings.catch_warnings():  # deprecated API, still the way into fbgemm in 2.13
                warnings.simplefilter("ignore")
                qw = torch._make_per_channel_quantized_tensor(
                    q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
            b = None if bias is None else bias.detach().float()
            self.packed = torch.ops.quantized.linear_prepack(qw, b)
            self._calib = torch.zeros(1, self.in_features)
            self._calib[0, 0], self._calib[0, min(1, self.in_features - 1)] = 1.0, -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_fbgemm:
            return reference_int8_linear(x, self.qweight, self.scale, self.bias)
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()                   # (T, in)
        row_scale = x2.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)  # (T, 1)
        xn = torch.cat([x2 / row_scale, self._calib])                   # (T+1, in), range [-1, 1]
        y = torch.ops.quantized.linear_dynamic(xn, self.packed, REDUCE_RANGE)[:-1]  # (T, out)
        if self.bias is not None:  # bias was added before the row scale came back: undo, redo
            y = (y - self.bias) * row_scale + self.bias
        else:
            y = y * row_scale
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


def reference_int8_linear(x, qweight, scale, bias):
    """Weight-only int8 in plain PyTorch: y = (x @ q^T) * scale + bias."""
    y = F.linear(x, qweight.to(x.dtype)) * scale.to(x.dtype)
    return y if bias is None else y + bias


def quantize_model(model: nn.Module, method: str) -> nn.Module:
    """Swap every Linear (and the tied output projection) for its quantized form."""
    if method == "none":
        return model
    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {method!r}; supported: {', '.join(QUANTIZATIONS)}")
    use_fbgemm = True
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Linear):
                setattr(module, child_name, Int8Linear(child.weight, child.bias, use_fbgemm))
    if getattr(model, "lm_head", "absent") is None:  # tied embeddings: quantize a copy for the output
        model.lm_head = Int8Linear(model.embed_tokens.weight, None, use_fbgemm)
    return model
