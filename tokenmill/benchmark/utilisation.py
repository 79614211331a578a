"""Achieved GFLOP/s and GB/s of an engine run against this machine's measured peaks.

Peaks come from two probes taken on the spot: a large fp32 matmul (compute) and a sum over a
512 MB fp32 tensor (memory read). Work is counted from what the model runner did (its
WorkCounter): per token 2 FLOPs per weight of every layer's linears, 2 more per weight of the
output layer for each sampled row, and attention's 4 * heads * head_dim per (query, key) pair;
bytes are the weights read once per step plus every sequence's K/V context read once per step.
Estimates of the work, not hardware counters: they say how far from the ceilings a run is.
"""
from __future__ import annotations

import time

import torch


def measure_peaks(seconds: float = 0.5) -> dict[str, float]:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        n += 1
    gflops = 2 * 2048 ** 3 * n / (time.perf_counter() - t0) / 1e9
    big = torch.ones(128 * 2**20)  # 512 MB, far past the caches
    big.sum()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        big.sum()
        n += 1
    gbps = big.numel() * 4 * n / (time.perf_counter() - t0) / 1e9
    return {"fp32_gflops": gflops, "read_gbps": gbps}


def model_sizes(runner) -> dict[str, float]:
    """Weights per token of the decoder layers and of the output layer, and bytes of it all."""
    from ..model.layers.linear import Linear
    from ..model.layers.q4 import Q4Linear
    from ..model.layers.quantized import Int8Linear

    def params(mod) -> int:
        return mod.weight.numel() if isinstance(mod, Linear) else mod.in_features * mod.out_features

    model, cfg = runner.model, runner.model_config
    head_params = cfg.vocab_size * cfg.hidden_size  # tied or not, quantized or not
    body_params = sum(params(mod) for name, mod in model.named_modules()
                      if name.startswith("layers.") and isinstance(mod, (Linear, Int8Linear, Q4Linear)))
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {"body_params": body_params, "head_params": head_params, "weight_bytes": weight_bytes,
            "kv_bytes_per_token": runner.kv_bytes_per_token,
            "attn_flops_per_pair": 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim}


def utilisation(runner, work: dict[str, int], seconds: float, peaks: dict[str, float]) -> dict[str, float]:
    """work: the difference of two WorkCounter snapshots taken around a run."""
    s = model_sizes(runner)
    flops = (2 * s["body_params"] * work["tokens"] + 2 * s["head_params"] * work["logit_rows"]
             + s["attn_flops_per_pair"] * work["attn_pairs"])
    nbytes = s["weight_bytes"] * work["steps"] + s["kv_bytes_per_token"] * work["context_reads"]
    gflops, gbps = flops / seconds / 1e9, nbytes / seconds / 1e9
    return {"gflops": gflops, "gflops_pct": 100 * gflops / peaks["fp32_gflops"],
            "gbps": gbps, "gbps_pct": 100 * gbps / peaks["read_gbps"]}
