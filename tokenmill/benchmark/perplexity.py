"""`tokenmill eval perplexity [FILE]`: perplexity of a model on a text, per weight format.

The text is cut into non-overlapping windows of --context tokens; every token after the first
of a window is scored. Default text: a short fixed English text shipped with the package.
"""
from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F

DEFAULT_TEXT = os.path.join(os.path.dirname(__file__), "..", "data", "eval_text.txt")


def perplexity(model_path: str | None, text: str, quantization: str, context: int = 512,
               num_threads: int | None = None, kv_cache_dtype: str = "auto") -> tuple[float, int]:
    from ..config import EngineConfig
    from ..engine.model_runner import ModelRunner
    from ..model.layers.attention import AttentionMetadata
    from ..model.loader import load_checkpoint
    ckpt = load_checkpoint(model_path)
    tok = ckpt.tokenizer()
    cfg = EngineConfig(model=model_path, quantization=quantization, num_threads=num_threads,
                       kv_cache_memory_gib=0.25, kv_cache_dtype=kv_cache_dtype, show_progress=False)
    runner = ModelRunner(cfg, ckpt)
    ids = tok.encode(text, add_special_tokens=False)
    context = min(context, runner.num_blocks * runner.block_size, ckpt.config.max_position)
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, context):
        window = ids[start:start + context + 1]
        inp, target = window[:-1], window[1:]
        slots = torch.arange(len(inp))  # blocks 0.. in order
        meta = AttentionMetadata.build([(0, len(inp), slots)], runner.device, runner.block_size,
                                       runner.use_native)
        hidden = runner.model(torch.tensor(inp, device=runner.device), torch.arange(len(inp), device=runner.device),
                              meta, runner.kv_caches)
        logits = runner.model.compute_logits(hidden)  # (L, vocab)
        total += F.cross_entropy(logits, torch.tensor(target, device=runner.device), reduction="sum").item()
        count += len(target)
    return math.exp(total / count), count


def main(args) -> int:
    path = args.file or DEFAULT_TEXT
    with open(path, encoding="utf-8") as f:
        text = f.read()
    rows = []
    for q in args.quantization:
        for kv in args.kv_cache_dtype:
            t0 = time.perf_counter()
            ppl, n = perplexity(args.model, text, q, args.context, args.num_threads, kv)
            rows.append((q if kv == "auto" else f"{q}, kv {kv}", ppl, n, time.perf_counter() - t0))
    base = rows[0][1]
    print(f"perplexity on {os.path.basename(path)} ({rows[0][2]} tokens scored, context {args.context})")
    print(f"{'format':<16} {'perplexity':>11} {'vs ' + rows[0][0]:>10} {'seconds':>8}")
    for q, ppl, n, dt in rows:
        print(f"{q:<16} {ppl:>11.4f} {100 * (ppl / base - 1):>+9.2f}% {dt:>8.1f}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity of the model on a text, per weight format")
    p.add_argument("file", nargs="?", default=None, help="UTF-8 text (default: the bundled English sample)")
    p.add_argument("--model", "-m", default=None)
    p.add_argument("--quantization", nargs="+", default=["none", "int8", "q4_1"])
    p.add_argument("--kv-cache-dtype", nargs="+", default=["auto"],
                   help="KV cache formats to score each weight format with (auto, float16, int8, ...)")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--num-threads", type=int, default=None)
    p.set_defaults(func=main)
