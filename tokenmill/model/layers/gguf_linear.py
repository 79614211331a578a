"""gguf: linear layers and embeddings that run a GGUF file's own blocks (csrc/gguf_*.cpp).

A Q4_K_M file keeps most matrices in Q4_K (4.5 bits a weight) and some in Q6_K; each keeps its
bytes as the file has them, one (rows, row_bytes) uint8 tensor per matrix, and the kernel takes
activations quantized to int8 (per 256 for the K-quants, per 32 for the 32-element types) against
them: no float copy of a weight is ever made. The shards of a fused projection (q/k/v, gate/up)
stay separate parts, as their types may differ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .native import kernels

# GGML type codes the kernels run, by name
NATIVE_TYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K": 12,
                "Q5_K": 13, "Q6_K": 14, "BF16": 30}
_BLOCK = {1: 1, 2: 32, 3: 32, 6: 32, 7: 32, 8: 32, 12: 256, 13: 256, 14: 256, 30: 1}


def runs_natively(type_code: int, cols: int) -> bool:
    return type_code in _BLOCK and cols % _BLOCK[type_code] == 0


@dataclass
class RawMatrix:
    """A matrix as the file stores it: data (rows, row_bytes) uint8 of GGML type type_code."""
    type_code: int
    rows: int
    cols: int
    data: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def dequantize(self) -> torch.Tensor:
        """(rows, cols) float32, by the gguf package (tests and the non-native paths)."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize
        raw = self.data.numpy()
        if self.type_code == 0:
            return torch.from_numpy(raw.view(np.float32).reshape(self.rows, self.cols).copy())
        if self.type_code == 30:  # the package returns bf16 bytes as they are
            return torch.from_numpy(raw.copy()).view(torch.bfloat16).float().view(self.rows, self.cols)
        w = dequantize(raw, GGMLQuantizationType(self.type_code))
        return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32).reshape(self.rows, self.cols))


class GGUFLinear(nn.Module):
    """y = x W^T + b with W in its file's blocks, filled part by part while loading (first row ->
    RawMatrix); `portable` runs the plain C++ dot products (tests)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.parts: dict[int, RawMatrix] = {}
        self.shard_offsets: dict[str, tuple[int, int]] = {}  # as MergedLinear's, for fused layers
        self.portable = False
        self._data: list[torch.Tensor] = []
        self._types: list[int] = []

    def load_part(self, first_row: int, m: RawMatrix) -> None:
        if m.cols != self.in_features or first_row + m.rows > self.out_features:
            raise ValueError(f"a ({m.rows}, {m.cols}) matrix does not fit rows {first_row}.. of a "
                             f"({self.out_features}, {self.in_features}) layer")
        if not runs_natively(m.type_code, m.cols):
            raise ValueError(f"GGML type {m.type_code} with {m.cols} columns does not run natively")
        self.parts[first_row] = m
        order = sorted(self.parts)
        self._data = [self.parts[k].data for k in order]
        self._types = [self.parts[k].type_code for k in order]

    def load_shard(self, shard: str, param: str, tensor) -> None:
        start, size = self.shard_offsets[shard]
        if tensor.shape[0] != size:
            raise ValueError(f"shard {shard}.{param}: expected {size} rows, got {tuple(tensor.shape)}")
        if param == "weight":
            self.load_part(start, tensor)
        else:
            getattr(self, param).data[start:start + size].copy_(tensor)

    def is_complete(self) -> bool:
        starts = sorted(self.parts)
        end = 0
        for s in starts:
            if s != end:
                return False
            end += self.parts[s].rows
        return end == self.out_features

    @property
    def type_names(self) -> list[str]:
        names = {v: k for k, v in NATIVE_TYPES.items()}
        return [names[t] for t in self._types]

    def nbytes(self) -> int:
        return sum(d.numel() for d in self._data)

    def dequantize(self) -> torch.Tensor:
        return torch.cat([self.parts[k].dequantize() for k in sorted(self.parts)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        bias = self.bias.data if self.bias is not None else torch.empty(0)
        y = kernels().gguf_linear(x2, self._data, self._types, bias, int(self.portable))
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


class GGUFEmbedding(nn.Module):
    """Token embeddings read from the file's blocks: only the looked-up rows are dequantized."""

    def __init__(self, m: RawMatrix, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.m, self.dtype = m, dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).long()
        rows = kernels().gguf_dequantize_rows(self.m.data, self.m.type_code, flat, self.m.cols)
        return rows.to(self.dtype).view(*ids.shape, -1)
