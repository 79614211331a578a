"""q4_1: 4-bit weights in GGUF Q4_1 blocks (w = d * q + m per 32 inputs, d and m float16),
run by csrc/q4_linear.cpp with activations quantized to int8 per block of 32.

Built from a layer's fp32 weights plus the file's per-block d and m (attached by the GGUF
loader), so a Q4_1 file's weights are reproduced exactly: q = round((w - m) / d) is checked to
give back w. The kernel keeps them in its packed records (5 bits per weight, nothing else kept);
one kernel for every batch size (batch invariant).
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


def reference_q4_linear(x: torch.Tensor, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor,
                        bias: torch.Tensor | None) -> torch.Tensor:
    """What the kernel computes, in float64 (the integer sums exact): x (M, K) in int8 per block
    of 32 (scale dx = max|x| / 127 each), y = sum_b d * dx * I + m * dx * sum(a_b)."""
    M, K = x.shape
    xb = x.float().view(M, K // 32, 32)
    amax = xb.abs().amax(-1, keepdim=True)                                   # (M, B, 1)
    a = torch.round(xb * torch.where(amax > 0, 127.0 / amax, 0.0)).clamp_(-127, 127)
    dx = (amax / 127.0).double()                                             # (M, B, 1)
    xs = (dx * a.double().sum(-1, keepdim=True)).squeeze(-1)                 # (M, B)
    q = codes.double().view(-1, K // 32, 32)                                 # (N, B, 32)
    i = torch.einsum("mbk,nbk->mnb", a.double(), q)                         # (M, N, B) exact
    y = (i * d.double()[None] * dx.view(M, 1, -1)).sum(-1) + xs @ m.double().t()
    return (y if bias is None else y + bias.double()).float()


class Q4Linear(nn.Module):
    def __init__(self, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor,
                 bias: torch.Tensor | None, native):
        super().__init__()
        self.out_features, self.in_features = codes.shape
        d, m = d.to(torch.float16).contiguous(), m.to(torch.float16).contiguous()  # (N, K/32)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.native = native
        self._bias = torch.empty(0)
        if native is not None:  # the kernel's records only: (ceil(N/16), K/32, 320) uint8
            self.register_buffer("_packed", native.q4_pack(codes, d, m), persistent=False)
            if bias is not None:  # padded to the records' 16-row groups once, not per call
                self._bias = F.pad(self.bias.data, (0, 16 * self._packed.shape[0] - self.out_features))
        else:
            self.register_buffer("_packed", None, persistent=False)
            self.register_buffer("qs", pack_nibbles(codes), persistent=False)   # (N, K/2) uint8
            self.d, self.m = d, m

    def blocks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes (N, K) uint8, d, m (N, K/32) float16), read back from whichever layout is kept."""
        N, K = self.out_features, self.in_features
        if self._packed is None:
            return unpack_nibbles(self.qs), self.d, self.m
        G, B, _ = self._packed.shape
        nib = self._packed[:, :, :256].reshape(G, B, 4, 16, 4)                 # (G, B, c, r, j)
        q = torch.stack([nib & 15, nib >> 4], dim=3)                          # (G, B, c, h, r, j)
        codes = q.permute(0, 4, 1, 2, 3, 5).reshape(G * 16, K)[:N]            # input 8c + 4h + j
        scales = self._packed[:, :, 256:].contiguous().view(torch.float16)    # (G, B, 32)
        d, m = (scales[..., i * 16:(i + 1) * 16].permute(0, 2, 1).reshape(G * 16, B)[:N] for i in (0, 1))
        return codes, d, m

    def dequantize(self) -> torch.Tensor:
        N, K = self.out_features, self.in_features
        codes, d, m = self.blocks()
        q = codes.float().view(N, K // 32, 32)
        return (q * d.float()[..., None] + m.float()[..., None]).view(N, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        if self.native is None:  # weight-only reference
            y = F.linear(x2, self.dequantize(), self.bias)
        else:
            y = self.native.q4_linear(x2, self._packed, self._bias, self.out_features)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)
