"""The bundled SmolLM2 requantized by llama.cpp's llama-quantize (--allow-requantize) to the types
people download, each run in its own blocks (--quantization gguf) against the same file
dequantized to float32 (--quantization none), both with a float32 KV cache:

    python bench/requant_fidelity.py [--types Q4_K_M Q5_K_M Q6_K Q8_0] [--tokens 32]

prints, per type: how many of 12 chat prompts get the same greedy tokens (all --tokens of them, and
the first), the common prefix of each, and perplexity on the bundled text both ways. The files go
to ~/.cache/tokenmill (made once; llama.cpp from bench/build_llama_server.sh). SmolLM2's width 576
is not a multiple of 256, so llama-quantize keeps those matrices in its fallback types (Q5_0 for
Q4_K, Q8_0 for Q6_K ...): the file reports what it holds.
"""
import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

def requantized(file_type: str) -> str:
    from compare_llamacpp import llama_bin
    from tokenmill.model.loader import default_model_path
    src = default_model_path()
    out = os.path.join(os.path.expanduser("~/.cache/tokenmill"),
                       os.path.basename(src).replace(".gguf", "") + f"-{file_type}.gguf")
    if not os.path.exists(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        subprocess.run([llama_bin("llama-quantize"), "--allow-requantize", src, out, file_type],
                       check=True, capture_output=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", nargs="+", default=["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"])
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    from tokenmill.benchmark.fidelity import against_float32
    from tokenmill.model.loader import load_checkpoint
    for ft in args.types:
        path = requantized(ft)
        answers, ppl = against_float32(path, args.tokens)
        a, b = answers["gguf"], answers["none"]
        prefix = [next((i for i, (x, y) in enumerate(zip(u, v)) if x != y), min(len(u), len(v))) for u, v in zip(a, b)]
        types = load_checkpoint(path).matrix_types()
        print(f"{ft} ({', '.join(f'{k} x {n}' for k, n in sorted(types.items(), key=lambda kv: -kv[1]))}): "
              f"{sum(u == v for u, v in zip(a, b))} of 12 equal for {args.tokens} tokens, first token "
              f"{sum(u[:1] == v[:1] for u, v in zip(a, b))} of 12; common prefixes {prefix}; perplexity "
              f"gguf {ppl['gguf']:.4f} vs float32 {ppl['none']:.4f} ({100 * (ppl['gguf'] / ppl['none'] - 1):+.2f}%)",
              flush=True)


if __name__ == "__main__":
    main()
