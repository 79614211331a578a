"""The paged-attention kernel alone on one prompt: time per call and GFLOP/s, for a layer of Gemma 3
270M (4 query heads, 1 KV head, head_dim 256) and of the 1B shape (32 / 8 / 64).

    python bench/attention_kernel.py [--tokens 512] [--repeats 15] [--cache float16]

The prompt's keys and values are written into a paged cache (16-token blocks) first; then every
row attends to its causal context. GFLOP/s counts 4 x heads x head_dim x T^2 / 2 (scores and
P.V, causal). Prints the median of --repeats calls after three warm-ups."""
import argparse
import statistics
import time

import torch

from tokenmill.model.layers.attention import AttentionMetadata, paged_attention, write_cache

SHAPES = {"gemma3_270m": (4, 1, 256), "llama_1b": (32, 8, 64)}  # heads, KV heads, head_dim
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cache", choices=sorted(DTYPES), default="float16")
    args = ap.parse_args()
    T, BS = args.tokens, 16
    print(f"threads {torch.get_num_threads()}, {T} prompt rows, {args.cache} cache")
    for name, (H, HKV, D) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        nb = -(-T // BS)
        kc = torch.zeros(HKV, nb, BS, D, dtype=DTYPES[args.cache])
        vc = torch.zeros_like(kc)
        meta = AttentionMetadata.build([(0, T, torch.arange(T))], torch.device("cpu"), BS, True)
        q, k, v = (torch.randn(T, h, D, generator=g) for h in (H, HKV, HKV))
        write_cache(k, v, kc, vc, meta)
        for _ in range(3):
            paged_attention(q, kc, vc, meta, D ** -0.5)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            paged_attention(q, kc, vc, meta, D ** -0.5)
            times.append(time.perf_counter() - t)
        s = statistics.median(times)
        print(f"{name:12} {s * 1e3:8.2f} ms {4 * H * D * T * T / 2 / s / 1e9:7.1f} GFLOP/s")


if __name__ == "__main__":
    main()
