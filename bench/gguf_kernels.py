"""The GGUF block kernels alone: time per call, int8 GOP/s and weight GB/s, at Gemma 3 270M's and
the 1B shape's matrices, for one activation row (decode) and many (prompt chunks).

    python bench/gguf_kernels.py [--repeats 7] [--cases q5_0_gate_up,q8_0_head] [--paths fastest,avx2]

Each case is (GGUF type, N output rows, K inputs); weights are random blocks in the type's layout
(tokenmill.model.loader.gguf_random). Prints the median of --repeats calls after one warm-up."""
import argparse
import statistics
import time

import numpy as np
import torch
from gguf import GGMLQuantizationType

from tokenmill.model.layers.native import kernels
from tokenmill.model.loader.gguf_random import random_blocks

CASES = {  # name: (type, N, K, row counts)
    "q5_0_gate_up": ("Q5_0", 4096, 640, (1, 4, 64, 512)),
    "q8_0_v": ("Q8_0", 256, 640, (1, 512)),
    "q8_0_head": ("Q8_0", 65536, 640, (1,)),
    "q4_k_o": ("Q4_K", 640, 1024, (1, 512)),
    "q6_k_down": ("Q6_K", 640, 2048, (1, 512)),
    "q4_k_1b_gate_up": ("Q4_K", 16384, 2048, (1, 64)),
    "q6_k_1b_down": ("Q6_K", 2048, 8192, (1, 64)),
}
PATHS = {"fastest": 0, "avx2": 2}  # gguf_linear's path argument


def _median_s(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--paths", default="fastest",
                    help="kernel paths to time side by side: fastest (VNNI tiles where the CPU has them), avx2")
    args = ap.parse_args()
    k = kernels()
    rng = np.random.default_rng(0)
    print(f"threads {torch.get_num_threads()}, AVX2 path {k.gguf_has_avx2()}, AVX-512 VNNI tiles {k.gguf_has_vnni()}")
    print(f"{'case':18} {'path':>7} {'M':>4} {'ms':>9} {'GOP/s':>7} {'GB/s':>6}")
    for name in args.cases.split(","):
        t, N, K, rows = CASES[name]
        raw = torch.from_numpy(random_blocks(t, N, K, rng))
        code = int(GGMLQuantizationType[t])
        for M in rows:
            x = torch.randn(M, K)
            for path in args.paths.split(","):
                code_path = PATHS[path]
                s = _median_s(lambda: k.gguf_linear(x, [raw], [code], torch.empty(0), code_path), args.repeats)
                print(f"{name:18} {path:>7} {M:4d} {s * 1e3:9.3f} {2 * M * N * K / s / 1e9:7.1f} "
                      f"{raw.numel() / s / 1e9:6.1f}")


if __name__ == "__main__":
    main()
