"""q4_1: 4-bit weights in GGUF Q4_1 blocks (w = d * q + m per 32 inputs, d and m float16),
run by csrc/q4_linear.cpp with activations in two int8 parts per token.

Built from a layer's fp32 weights plus the file's per-block d and m (attached by the GGUF
loader), so a Q4_1 file's weights are reproduced exactly: q = round((w - m) / d) is checked to
give back w. 5 bits per weight; one kernel for every batch size (batch invariant).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """q: (N, K) uint8 in 0..15 -> (N, K/2): per block of 32, byte j = q_j | q_{j+16} << 4."""
    N, K = q.shape
    blocks = q.view(N, K // 32, 2, 16)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(N, K // 2)


def unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    N, half = qs.shape
    blocks = qs.view(N, half // 16, 16)
    return torch.stack([blocks & 15, blocks >> 4], dim=2).reshape(N, half * 2)


def codes_from_blocks(weight: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor | None:
    """The 4-bit codes of weight (N, K) on the grid of d, m (N, K/32); None if it is not on it."""
    N, K = weight.shape
    w = weight.float().view(N, K // 32, 32)
    df, mf = d.float()[..., None], m.float()[..., None]
    q = torch.where(df != 0, (w - mf) / torch.where(df != 0, df, 1.0), 0.0).round_().clamp_(0, 15)
    if not torch.allclose(q * df + mf, w, rtol=1e-5, atol=1e-6):
        return None
    return q.to(torch.uint8).view(N, K)


class Q4Linear(nn.Module):
    def __init__(self, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor,
                 bias: torch.Tensor | None, native):
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.register_buffer("qs", pack_nibbles(codes), persistent=False)   # (N, K/2) uint8
        self.register_buffer("d", d.to(torch.float16).contiguous(), persistent=False)  # (N, K/32)
        self.register_buffer("m", m.to(torch.float16).contiguous(), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.native = native
        self._bias = torch.empty(0) if bias is None else self.bias.data

    def dequantize(self) -> torch.Tensor:
        N, K = self.out_features, self.in_features
        q = unpack_nibbles(self.qs).float().view(N, K // 32, 32)
        return (q * self.d.float()[..., None] + self.m.float()[..., None]).view(N, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        if self.native is None:  # weight-only reference
            y = F.linear(x2, self.dequantize(), self.bias)
        else:
            y = self.native.q4_linear(x2, self.qs, self.d, self.m, self._bias)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)
