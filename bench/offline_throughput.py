"""Offline throughput: N requests submitted together, output tokens per second.

    python bench/offline_throughput.py [--model PATH] [--concurrency 1 4 16 32] [--output-len 128]
                                       [--quantization auto|none|int8|q4_1]

Each request is a distinct chat prompt; generation runs for exactly --output-len tokens
(ignore_eos), greedy. Prints one line per concurrency and a JSON summary.
"""
import argparse
import json
import time

from tokenmill import LLM, SamplingParams

TOPICS = ["the ocean", "volcanoes", "bread baking", "chess openings", "honey bees", "the moon",
          "railways", "jazz", "glaciers", "coffee", "bicycles", "origami", "deserts", "owls",
          "lighthouses", "tea", "comets", "forests", "the printing press", "submarines"]


def prompts(llm, n):
    return [llm.tokenizer.encode_chat([{"role": "user", "content":
            f"Write a short essay about {TOPICS[i % len(TOPICS)]} (variant {i})."}]) for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--num-threads", type=int, default=None)
    ap.add_argument("--quantization", default="auto", choices=["auto", "none", "int8", "q4_1"])
    args = ap.parse_args()
    llm = LLM(args.model, num_threads=args.num_threads, quantization=args.quantization, show_progress=False)
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    llm.generate(prompts(llm, 2), SamplingParams(max_tokens=8))  # warm-up
    results = []
    for c in args.concurrency:
        batch = prompts(llm, c)
        t0 = time.perf_counter()
        outs = llm.generate(batch, params)
        dt = time.perf_counter() - t0
        n_out = sum(len(o.outputs[0].token_ids) for o in outs)
        n_in = sum(len(p) for p in batch)
        r = {"concurrency": c, "output_tokens": n_out, "prompt_tokens": n_in, "seconds": round(dt, 2),
             "output_tok_per_s": round(n_out / dt, 1)}
        results.append(r)
        print(f"concurrency {c:3d}: {n_out:5d} output tokens in {dt:6.2f} s -> {n_out / dt:7.1f} tok/s")
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kv = llm.engine.runner.num_blocks * llm.engine.config.block_size
    print(f"quantization {llm.engine.runner.quantization}: peak RSS {rss:.0f} MB "
          f"(KV cache {llm.engine.config.kv_cache_memory_gib} GiB = {kv} tokens)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
