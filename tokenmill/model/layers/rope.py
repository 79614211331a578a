"""Rotary position embedding, "rotate half" (NeoX / Hugging Face) layout.

GGUF llama weights are stored in the interleaved layout; the loader permutes q/k back so
one rotary implementation serves both file formats. A partial rotary (phi3's
partial_rotary_factor) turns only the first `dim` values of each head.

LongRoPE (phi3): per-frequency divisors, the short set for contexts up to the pretraining length
and the long set past it, and cos and sin scaled by an attention factor. Hugging Face picks the set
from each forward's longest position (so a cache's keys may hold either); tokenmill picks it once
from the engine's context, as llama.cpp does from n_ctx: the long set only where the engine can
hold a context past the pretraining length (trim).
"""
import math

import torch
from torch import nn


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    # Llama 3.1 long-context scaling: keep high frequencies, divide low ones by `factor`,
    # blend smoothly in between.
    factor = scaling["factor"]
    low = scaling.get("low_freq_factor", 1.0)
    high = scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return torch.where(mid, blended, scaled)


_EAGER_POSITIONS = 8192


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, theta: float, scaling: dict | None = None):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type")
        if kind == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)
        elif kind == "freq_factors":  # GGUF's rope_freqs tensor
            inv_freq = inv_freq / torch.tensor(scaling["factors"], dtype=torch.float32)
        elif kind == "linear":
            inv_freq = inv_freq / scaling["factor"]
        elif kind == "longrope":
            self.base_inv_freq, self.longrope = inv_freq, _longrope(scaling, max_position)
            inv_freq = self._longrope_inv_freq(max_position)
        elif kind not in (None, "default"):
            raise ValueError(f"unsupported rope scaling {kind!r} (supported: llama3, linear, longrope, GGUF rope_freqs)")
        self.inv_freq, self.max_position = inv_freq, max_position
        self.attention_factor = self.longrope["attention_factor"] if kind == "longrope" else 1.0
        # tables for the first positions now; the engine sizes them to its context (trim):
        # a Llama 3 GGUF says 131,072 positions, 134 MB of tables at head_dim 128
        cos, sin = self._tables(min(max_position, _EAGER_POSITIONS), inv_freq.device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        # row t depends on t alone, so tables of any length agree on the rows they share
        t = torch.arange(n, dtype=torch.float32, device=device)
        freqs = torch.outer(t, self.inv_freq.to(device))  # (n, head_dim/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (n, dim)
        if self.attention_factor != 1.0:
            return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor
        return emb.cos(), emb.sin()

    def _longrope_inv_freq(self, context: int) -> torch.Tensor:
        lr = self.longrope
        factors = lr["long_factor"] if context > lr["original"] else lr["short_factor"]
        return self.base_inv_freq / torch.tensor(factors, dtype=torch.float32)

    def trim(self, max_position: int) -> None:
        """The engine's context: tables never grow past it (nor past the model's own), and
        grow to it only as positions are used (cover): 61k positions of tables took 0.04 s of
        a 1B model's 0.2 s load."""
        self.max_position = min(max_position, self.max_position)
        if hasattr(self, "longrope"):  # the factor set for this context
            inv_freq = self._longrope_inv_freq(self.max_position)
            if not torch.equal(inv_freq, self.inv_freq):
                self.inv_freq = inv_freq
                self.cos, self.sin = self._tables(min(self.cos.shape[0], self.max_position), self.cos.device)
        if self.max_position < self.cos.shape[0]:
            self.cos, self.sin = self.cos[:self.max_position].clone(), self.sin[:self.max_position].clone()

    def cover(self, n: int) -> None:
        """Tables for at least positions 0..n-1 (doubling, so that a growing chat rebuilds them
        a few times at most)."""
        if n > self.cos.shape[0]:
            self.cos, self.sin = self._tables(min(max(n, 2 * self.cos.shape[0]), self.max_position), self.cos.device)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        # q: (T, n_heads, head_dim), k: (T, n_kv_heads, head_dim), positions: (T,)
        cos = self.cos[positions].unsqueeze(1).to(q.dtype)  # (T, 1, head_dim)
        sin = self.sin[positions].unsqueeze(1).to(q.dtype)
        return _apply(q, cos, sin), _apply(k, cos, sin)


def _longrope(scaling: dict, max_position: int) -> dict:
    """LongRoPE's parameters as Hugging Face reads them: the attention factor from `factor`, else
    from the model's context over its pretraining length."""
    original = int(scaling["original_max_position_embeddings"])
    factor = scaling.get("factor") or max_position / original
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1.0 else 1.0
    return {"original": original, "attention_factor": float(attention),
            "short_factor": list(scaling["short_factor"]), "long_factor": list(scaling["long_factor"])}


def _apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if cos.shape[-1] < x.shape[-1]:  # a partial rotary: the rest of each head passes through
        d = cos.shape[-1]
        return torch.cat([_apply(x[..., :d], cos, sin), x[..., d:]], dim=-1)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
