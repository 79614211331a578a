"""Linear layers. Fused projections (q/k/v, gate/up) are filled shard by shard at load time,
so one GEMM replaces three (or two) per layer."""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn


_weight_device: str | None = None


@contextlib.contextmanager
def weights_on_meta():
    """Matrices (linears, embeddings) created inside get no memory (the meta device), to be
    replaced by layers that keep a file's own blocks; everything else is built as usual."""
    global _weight_device
    _weight_device = "meta"
    try:
        yield
    finally:
        _weight_device = None


def empty_matrix(rows: int, cols: int) -> torch.Tensor:
    return torch.empty(rows, cols, device=_weight_device)


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(empty_matrix(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        # first row -> (d, m) of the GGUF Q4_1 blocks those rows were loaded from (see q4.py)
        self.q4_1_parts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.loaded: set[tuple[str, str]] = set()  # (shard, param) filled so far

    def materialize(self) -> None:
        """Memory for a weight built on the meta device (weights_on_meta), as its first rows arrive."""
        if self.weight.is_meta:
            self.weight = nn.Parameter(torch.zeros(self.weight.shape, dtype=self.weight.dtype), requires_grad=False)

    def expected_parts(self) -> set[tuple[str, str]]:
        shards = getattr(self, "shard_offsets", None) or {"": None}
        return {(s, p) for s in shards for p in (("weight", "bias") if self.bias is not None else ("weight",))}

    def is_complete(self) -> bool:
        return self.loaded >= self.expected_parts()

    def note_q4_1(self, first_row: int, tensor: torch.Tensor) -> None:
        """Keep the GGUF Q4_1 block scales a loaded weight carries (tensor.q4_1), if any."""
        if hasattr(tensor, "q4_1"):
            self.q4_1_parts[first_row] = tensor.q4_1

    def q4_1_blocks(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(d, m), each (out, in / 32), if every row came from Q4_1 blocks; else None."""
        parts = [self.q4_1_parts[k] for k in sorted(self.q4_1_parts)]
        if sum(d.shape[0] for d, _ in parts) != self.weight.shape[0]:
            return None
        return torch.cat([d for d, _ in parts]), torch.cat([m for _, m in parts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MergedLinear(Linear):
    """Several projections of the same input stacked along the output dimension.

    shard_sizes maps a shard name ("q", "k", "v" or "gate", "up") to its number of output rows.
    """

    def __init__(self, in_features: int, shard_sizes: dict[str, int], bias: bool = False):
        super().__init__(in_features, sum(shard_sizes.values()), bias)
        self.shard_offsets: dict[str, tuple[int, int]] = {}
        start = 0
        for name, size in shard_sizes.items():
            self.shard_offsets[name] = (start, size)
            start += size

    def load_shard(self, shard: str, param: str, tensor: torch.Tensor) -> None:
        start, size = self.shard_offsets[shard]
        self.materialize()
        self.loaded.add((shard, param))
        target = getattr(self, param)
        if tensor.shape[0] != size:
            raise ValueError(f"shard {shard}.{param}: expected {size} rows, got {tuple(tensor.shape)}")
        target.data[start:start + size].copy_(tensor)
        if param == "weight":
            self.note_q4_1(start, tensor)
