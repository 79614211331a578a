"""Offline throughput: N requests submitted together, output tokens per second.

    python bench/offline_throughput.py [--model PATH] [--concurrency 1 4 16 32] [--output-len 128]
                                       [--quantization auto|none|int8|q4_1]

Each request is a distinct chat prompt; generation runs for exactly --output-len tokens
(ignore_eos), greedy. Prints one line per concurrency, with the achieved GFLOP/s and GB/s
against the machine's peaks measured at start (tokenmill/benchmark/utilisation.py), and a JSON
summary.
"""
import argparse
import json
import time

from tokenmill import LLM, SamplingParams
from tokenmill.benchmark.utilisation import measure_peaks, utilisation

TOPICS = ["the ocean", "volcanoes", "bread baking", "chess openings", "honey bees", "the moon",
          "railways", "jazz", "glaciers", "coffee", "bicycles", "origami", "deserts", "owls",
          "lighthouses", "tea", "comets", "forests", "the printing press", "submarines"]


def prompts(llm, n):
    return [llm.tokenizer.encode_chat([{"role": "user", "content":
            f"Write a short essay about {TOPICS[i % len(TOPICS)]} (variant {i})."}]) for i in range(n)]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--num-threads", type=int, default=None)
    ap.add_argument("--quantization", default="auto", choices=["auto", "none", "int8", "q4_1"])
    args = ap.parse_args()
    llm = LLM(args.model, num_threads=args.num_threads, quantization=args.quantization, show_progress=False)
    model = llm.engine.runner.model
    weights_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    loaded_rss = rss_mb()
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    llm.generate(prompts(llm, 2), SamplingParams(max_tokens=8))  # warm-up
    peaks = measure_peaks()
    print(f"machine peaks (measured now): fp32 matmul {peaks['fp32_gflops']:.0f} GFLOP/s, "
          f"memory read {peaks['read_gbps']:.1f} GB/s")
    runner = llm.engine.runner
    results = []
    for c in args.concurrency:
        batch = prompts(llm, c)
        before = runner.work.snapshot()
        t0 = time.perf_counter()
        outs = llm.generate(batch, params)
        dt = time.perf_counter() - t0
        after = runner.work.snapshot()
        use = utilisation(runner, {k: after[k] - before[k] for k in after}, dt, peaks)
        n_out = sum(len(o.outputs[0].token_ids) for o in outs)
        n_in = sum(len(p) for p in batch)
        r = {"concurrency": c, "output_tokens": n_out, "prompt_tokens": n_in, "seconds": round(dt, 2),
             "output_tok_per_s": round(n_out / dt, 1), **{k: round(v, 1) for k, v in use.items()}}
        results.append(r)
        print(f"concurrency {c:3d}: {n_out:5d} output tokens in {dt:6.2f} s -> {n_out / dt:7.1f} tok/s"
              f"   {use['gflops']:6.1f} GFLOP/s ({use['gflops_pct']:4.1f}% of fp32 peak)"
              f"  {use['gbps']:5.1f} GB/s ({use['gbps_pct']:4.1f}% of read peak)")
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kv = llm.engine.runner.num_blocks * llm.engine.config.block_size
    print(f"quantization {llm.engine.runner.quantization}: weights {weights_mb:.0f} MB, RSS after load "
          f"{loaded_rss:.0f} MB, peak RSS {peak:.0f} MB (KV cache {llm.engine.config.kv_cache_memory_gib} GiB, "
          f"{llm.engine.runner.kv_dtype}, {kv} tokens, touched as used)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
