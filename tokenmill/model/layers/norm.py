"""RMSNorm, computed in float32 whatever the activation dtype (as Hugging Face does).

With a residual, the layer first adds: residual = residual + x, and normalizes the sum
(returning both), so the model's residual stream costs no separate op. On CPU float32 this is
one C++ call (csrc/fused_ops.cpp); elsewhere plain PyTorch."""
import torch
from torch import nn

from .native import fused_ops


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        kern = fused_ops(x)
        if kern is not None and x.dim() == 2 and self.weight.dtype == torch.float32:
            if residual is None:
                return kern.rms_norm(x, self.weight, self.eps)
            return kern.add_rms_norm(x, residual, self.weight, self.eps), residual  # residual += x
        if residual is None:
            return self._norm(x)
        residual = residual + x
        return self._norm(residual), residual

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)
