"""Does the engine run on CUDA? A short check for a machine with a GPU (CI has none).

    python bench/cuda_check.py [--out DIR]

On random-weight models built here (tests/tiny_models.py; no download): greedy tokens on CUDA
fp32 vs CPU fp32; on CUDA (bf16, the default there) batched vs alone for greedy, seeded sampling,
a JSON-schema grammar and n-gram speculation; then decode tok/s of a SmolLM2-shaped model
(576 wide, 30 layers, random weights, byte vocabulary) at 1 and 64 streams. Prints one line per
check and a JSON summary; exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tests.tiny_models import make_hf_model, save_hf_dir  # noqa: E402
from tokenmill import LLM, SamplingParams  # noqa: E402
from tokenmill.engine.structured import GrammarSpec  # noqa: E402

PROMPTS = ["The quick brown fox", "Once upon a time", "1, 2, 3, 4,", "def add(a, b):"]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]}},
          "required": ["a", "b"], "additionalProperties": False}
results: dict[str, object] = {}
failed: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results[name] = bool(ok)
    if not ok:
        failed.append(name)
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)


def tokens(llm, params, prompts=PROMPTS):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


def one_by_one(llm, params_list, prompts=PROMPTS):
    return [tokens(llm, p, [q])[0] for q, p in zip(prompts, params_list)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="write the summary here as cuda_check.json")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: run the same checks on the CPU")
    args = ap.parse_args()
    print("torch", torch.__version__, "cuda", torch.version.cuda,
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", flush=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu" and not args.dry_run:
        sys.exit("no CUDA device (--dry-run runs the checks on the CPU)")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    tmp = tempfile.mkdtemp()
    tiny = save_hf_dir(make_hf_model("llama", seed=3), os.path.join(tmp, "tiny"))
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)

    t0 = time.perf_counter()
    cpu = LLM(tiny, device="cpu", dtype="float32", quantization="none", show_progress=False)
    ref = tokens(cpu, greedy)
    del cpu
    gpu32 = LLM(tiny, device=dev, dtype="float32", quantization="none", show_progress=False)
    same = sum(a == b for a, b in zip(tokens(gpu32, greedy), ref))
    check("fp32 greedy: CUDA equals CPU", same == len(PROMPTS), f"({same}/{len(PROMPTS)} prompts)")
    del gpu32

    gpu = LLM(tiny, device=dev, show_progress=False)  # bf16, no quantization: the CUDA defaults
    results["dtype"] = str(gpu.engine.runner.dtype) if hasattr(gpu.engine, "runner") else "auto"
    check("bf16 greedy: batched equals alone", tokens(gpu, greedy) == one_by_one(gpu, [greedy] * 4))
    seeded = [SamplingParams(temperature=0.9, top_p=0.95, seed=s, max_tokens=24, ignore_eos=True) for s in range(4)]
    check("seeded sampling: batched equals alone", tokens(gpu, seeded) == one_by_one(gpu, seeded))
    proc = gpu.engine.structured.compile(GrammarSpec.json_schema(SCHEMA))
    js = [SamplingParams(temperature=1.0, seed=s, max_tokens=64, logits_processors=[proc.clone()]) for s in range(4)]
    outs = gpu.generate(PROMPTS, js)
    valid = 0
    for o in outs:
        try:
            d = json.loads(o.outputs[0].text)
            valid += isinstance(d.get("a"), int) and d.get("b") in ("x", "y")
        except ValueError:
            pass
    check("JSON schema grammar on CUDA", valid + sum(o.outputs[0].finish_reason == "length" for o in outs) == 4,
          f"({valid} valid, the rest cut by max_tokens)")
    rep = ["a b c d a b c d a b c d a b c d a b c d"] * 2
    plain = LLM(tiny, device=dev, speculation="off", show_progress=False)
    long_greedy = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    check("n-gram speculation: greedy equals plain decoding", tokens(gpu, long_greedy, rep) == tokens(plain, long_greedy, rep))
    del plain, gpu
    results["checks_s"] = round(time.perf_counter() - t0, 1)

    shaped = save_hf_dir(make_hf_model("llama", seed=1, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                       initializer_range=0.02), os.path.join(tmp, "shaped"))
    big = LLM(shaped, device=dev, max_num_seqs=64, show_progress=False)
    speed = {}
    for c in (1, 64):
        p = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True, speculative=False)
        big.generate(["warm up"] * c, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
        sync()
        t = time.perf_counter()
        outs = big.generate([f"prompt number {i}" for i in range(c)], p)
        sync()
        dt = time.perf_counter() - t
        n = sum(len(o.outputs[0].token_ids) for o in outs)
        speed[f"c={c}"] = round(n / dt, 1)
        print(f"SmolLM2-shaped random model, bf16, c={c}: {n / dt:.1f} output tok/s ({n} tokens, {dt:.2f} s)", flush=True)
    results["decode_tok_s"] = speed
    results["failed"] = failed
    print(json.dumps(results))
    if args.out:
        with open(os.path.join(args.out, "cuda_check.json"), "w") as f:
            json.dump(results, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
