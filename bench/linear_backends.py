"""The linear layers of one engine step, per backend, in one run: ms per step for M tokens.

    python bench/linear_backends.py [--rows 1 4 16 64] [--repeats 5]

Layers: SmolLM2-135M's 30 x (qkv 576->960, o 576->576, gate_up 576->3072, down 1536->576)
plus the output layer 576->49152, random weights. Backends: fp32 F.linear (oneDNN/MKL), fbgemm
int8 (per-token activations), ours int8 (packed weights, csrc/int8_linear.cpp), ours q4_1 (Q4_1
blocks, VNNI kernel).
"""
import argparse
import time

import torch

from tokenmill.model.layers.q4 import Q4Linear
from tokenmill.model.layers.quantized import Int8Linear, _fbgemm_available, _native

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]


def fp32_layer(w):
    return lambda x: torch.nn.functional.linear(x, w)


def q4_layer(w):
    N, K = w.shape
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8)
    d = torch.full((N, K // 32), 0.01, dtype=torch.float16)
    m = torch.full((N, K // 32), -0.08, dtype=torch.float16)
    return Q4Linear(codes, d, m, None, _native())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    weights = [torch.randn(o, i) * 0.05 for o, i in SHAPES]
    backends = {"fp32": [fp32_layer(w) for w in weights]}
    if _fbgemm_available():
        backends["fbgemm int8"] = [Int8Linear(w, None, backend="fbgemm") for w in weights]
    if _native() is not None:
        backends["ours int8"] = [Int8Linear(w, None, backend="native") for w in weights]
        backends["ours q4_1"] = [q4_layer(w) for w in weights]
    print(f"ms per step over {len(SHAPES)} layers")
    print(f"{'tokens':>6} " + " ".join(f"{name:>12}" for name in backends))
    for M in args.rows:
        xs = {k: torch.randn(M, k) for k in {i for _, i in SHAPES}}
        cells = []
        for layers in backends.values():
            for layer, (_, k) in zip(layers, SHAPES):  # warm-up
                layer(xs[k])
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                for layer, (_, k) in zip(layers, SHAPES):
                    layer(xs[k])
            cells.append((time.perf_counter() - t0) / args.repeats * 1e3)
        print(f"{M:>6} " + " ".join(f"{c:>12.2f}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
