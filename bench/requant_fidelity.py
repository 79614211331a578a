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

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "What is 12 times 7?",
             "Name three colors.", "Who wrote Hamlet?", "Explain gravity in one sentence.",
             "What is a cat?", "Give me a synonym for happy.", "How many legs does a spider have?",
             "What is the boiling point of water?", "Tell me a fun fact.", "Translate 'hello' to Spanish."]


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
    from tokenmill import LLM, SamplingParams
    from tokenmill.benchmark.perplexity import DEFAULT_TEXT, perplexity
    from tokenmill.model.loader import load_checkpoint
    text = open(DEFAULT_TEXT, encoding="utf-8").read()
    params = SamplingParams(temperature=0, max_tokens=args.tokens)
    for ft in args.types:
        path = requantized(ft)
        answers, ppl = {}, {}
        for q in ("gguf", "none"):
            llm = LLM(path, quantization=q, kv_cache_dtype="float32", show_progress=False)
            outs = llm.chat([[{"role": "user", "content": x}] for x in QUESTIONS], params)
            answers[q] = [o.outputs[0].token_ids for o in outs]
            del llm
            ppl[q] = perplexity(path, text, q, context=1024, kv_cache_dtype="float32")[0]
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
