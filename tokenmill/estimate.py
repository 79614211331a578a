"""`tokenmill estimate`: how much memory a model needs in each weight format, how much KV cache
a context costs, and what decode speed to expect from this machine's memory bandwidth.

Decode reads every weight once per step, plus each sequence's KV cache, so at one stream
tok/s is about bandwidth / (weight bytes + KV bytes of the context). The shape comes from
a GGUF header or an HF config.json (exact), or from a bare parameter count with a typical
shape of that size (stated as assumed).
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass

# bytes per weight of each format; int8 carries one float32 scale per output channel (counted
# separately), q4 is GGUF Q4_1: 32 weights in 20 bytes (16 nibble bytes, fp16 scale and min); the
# GGUF types run as stored (--quantization gguf) take their block's bytes over its weights
FORMATS = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "q4": 20 / 32,
           "Q8_0": 34 / 32, "Q6_K": 210 / 256, "Q5_K": 176 / 256, "Q5_0": 22 / 32, "Q4_K": 144 / 256,
           "Q4_0": 18 / 32}

# KV cache formats: bytes of one head's K (or V) row of head_dim values; int8 rows carry a float32
# scale (attention.cache_row_bytes)
KV_FORMATS = {"float32": lambda d: 4 * d, "float16": lambda d: 2 * d, "bfloat16": lambda d: 2 * d,
              "int8": lambda d: d + 4}

# What a serving process holds besides weights and KV cache: Python, torch, the tokenizer, the
# server (measured: `tokenmill serve` of SmolLM2 minus its weights and KV cache, ~290 MB), and the
# rotary tables (cos and sin, float32, per position up to the context)
RUNTIME_BYTES = 290 * 2**20


@dataclass
class Shape:
    name: str
    params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int
    assumed: bool = False   # a typical shape for this size, not read from the model
    stored_bytes: int = 0   # a GGUF file's tensors as stored (what --quantization gguf keeps)
    stored_types: str = ""  # e.g. "Q4_K x 193, Q6_K x 33, F32 x 65"


# typical shapes by size (public configs of well-known models of that size)
_TYPICAL = [
    ("SmolLM2-135M", 135e6, 30, 576, 9, 3, 64, 49152, 8192),
    ("Qwen2.5-0.5B", 494e6, 24, 896, 14, 2, 64, 151936, 32768),
    ("Llama-3.2-1B", 1.24e9, 16, 2048, 32, 8, 64, 128256, 131072),
    ("Llama-3.2-3B", 3.21e9, 28, 3072, 24, 8, 128, 128256, 131072),
    ("Llama-3.1-8B", 8.03e9, 32, 4096, 32, 8, 128, 128256, 131072),
    ("Llama-2-13B", 13.0e9, 40, 5120, 40, 40, 128, 32000, 4096),
    ("Qwen2.5-32B", 32.8e9, 64, 5120, 40, 8, 128, 152064, 32768),
    ("Llama-3.1-70B", 70.6e9, 80, 8192, 64, 8, 128, 128256, 131072),
]


def parse_count(text: str) -> int:
    """'7B', '135M', '1.5b', '7000000000' -> a parameter count."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMbBtT]?)\s*", text)
    if not m:
        raise ValueError(f"not a parameter count: {text!r} (e.g. 7B, 135M)")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def typical_shape(params: int) -> Shape:
    """The shape of the well-known model nearest in size (on a log scale), with this count."""
    import math
    row = min(_TYPICAL, key=lambda r: abs(math.log(r[1]) - math.log(params)))
    return Shape(f"~{row[0]}", params, *row[2:], assumed=True)


def shape_from_gguf(path: str) -> Shape:
    from .model.loader.gguf_header import read_header
    meta, tensors, buf = read_header(path)
    buf.close()
    arch = meta["general.architecture"]

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // heads))
    vocab = len(meta.get("tokenizer.ggml.tokens", [])) or int(get("vocab_size", 0))
    params = sum(int(_prod(t.shape)) for t in tensors)
    from collections import Counter
    from gguf import GGMLQuantizationType
    kinds = Counter(GGMLQuantizationType(t.type_code).name for t in tensors)
    return Shape(meta.get("general.name", os.path.basename(path)), params, int(get("block_count")), hidden,
                 heads, int(get("attention.head_count_kv", heads)), head_dim, vocab, int(get("context_length", 0)),
                 stored_bytes=sum(t.nbytes for t in tensors),
                 stored_types=", ".join(f"{k} x {n}" for k, n in kinds.most_common()))


def shape_from_hf_dir(path: str) -> Shape:
    with open(os.path.join(path, "config.json")) as f:
        c = json.load(f)
    hidden, heads, layers = c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"]
    kv = c.get("num_key_value_heads", heads)
    head_dim = c.get("head_dim") or hidden // heads
    inter, vocab = c.get("intermediate_size", 4 * hidden), c["vocab_size"]
    # embeddings (+ untied head), attention, MLP (gate, up, down), norms
    per_layer = hidden * (heads * head_dim) * 2 + hidden * (kv * head_dim) * 2 + 3 * hidden * inter + 2 * hidden
    embed = vocab * hidden * (1 if c.get("tie_word_embeddings", False) else 2)
    return Shape(os.path.basename(os.path.normpath(path)), layers * per_layer + embed + hidden, layers, hidden,
                 heads, kv, head_dim, vocab, c.get("max_position_embeddings", 0))


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


def load_shape(model: str | None, params: str | None) -> Shape:
    if params:
        return typical_shape(parse_count(params))
    if model is None:
        from .model.loader import default_model_path
        model = default_model_path()
    if os.path.isdir(model):
        return shape_from_hf_dir(model)
    return shape_from_gguf(model)


def measure_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Memory read bandwidth in bytes/s: the best of a few sums over a buffer larger than the
    caches (with torch's threads, as the engine runs)."""
    import torch
    x = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    x.sum()  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def kv_bytes_per_token(s: Shape, kv_bytes: int = 2) -> int:
    """K and V of every layer for one token (float16 cache: 2 bytes per value)."""
    return 2 * s.layers * s.kv_heads * s.head_dim * kv_bytes


def kv_format_bytes_per_token(s: Shape, fmt: str) -> int:
    return 2 * s.layers * s.kv_heads * KV_FORMATS[fmt](s.head_dim)


def estimate(s: Shape, context: int, concurrency: int, bandwidth: float | None) -> dict:
    kv_token = kv_bytes_per_token(s)
    kv_total = kv_token * context * concurrency
    rows = []
    formats = dict(FORMATS)
    if s.stored_bytes:
        formats = {"as stored": s.stored_bytes / s.params, **formats}
    for fmt, per_weight in formats.items():
        weights = s.stored_bytes if fmt == "as stored" else s.params * per_weight
        if fmt == "int8":
            weights += 4 * s.layers * 7 * s.hidden  # per-channel scales, roughly
        # one step streams every weight once and each sequence's KV cache
        step_bytes = weights + kv_token * context * concurrency
        tok_s = bandwidth / step_bytes if bandwidth else None
        rows.append({"format": fmt, "weights_bytes": int(weights), "total_bytes": int(weights + kv_total),
                     "decode_tok_s_one_stream": (bandwidth / (weights + kv_token * context)) if bandwidth else None,
                     "decode_tok_s_all_streams": tok_s * concurrency if tok_s else None})
    tokens = context * concurrency
    kv = [{"format": f, "bytes_per_token": kv_format_bytes_per_token(s, f),
           "bytes_total": kv_format_bytes_per_token(s, f) * tokens} for f in KV_FORMATS]
    # a serving process after load: the weights as stored (or int8 for float files), the KV cache
    # for the tokens asked, the runtime and rotary tables for the context
    weights = s.stored_bytes or next(r["weights_bytes"] for r in rows if r["format"] == "int8")
    runtime = RUNTIME_BYTES + 8 * s.head_dim * min(context, s.context or context)
    loaded = [{"kv_format": k["format"], "rss_bytes": int(weights + k["bytes_total"] + runtime)} for k in kv]
    return {"model": asdict(s), "context": context, "concurrency": concurrency,
            "kv_bytes_per_token": kv_token, "kv_bytes_total": kv_total,
            "bandwidth_bytes_s": bandwidth, "formats": rows, "kv_formats": kv,
            "rss_after_load": {"weights": "as stored" if s.stored_bytes else "int8", "runtime_bytes": runtime,
                               "by_kv_format": loaded}}


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_table(e: dict) -> str:
    s = e["model"]
    lines = [f"model: {s['name']}  ({s['params'] / 1e6:,.0f}M parameters)",
             f"shape: {s['layers']} layers, hidden {s['hidden']}, {s['heads']} heads, {s['kv_heads']} KV heads, "
             f"head size {s['head_dim']}, vocabulary {s['vocab']}"
             + ("  [ASSUMED: typical shape for this size]" if s["assumed"] else "  [read from the model]"),
             f"KV cache (float16): {e['kv_bytes_per_token'] / 1024:.1f} KiB per token; "
             f"{e['context']} tokens x {e['concurrency']} sequences = {_gib(e['kv_bytes_total'])}"]
    if e["bandwidth_bytes_s"]:
        lines.append(f"memory bandwidth (measured here): {e['bandwidth_bytes_s'] / 1e9:.1f} GB/s")
    lines.append("")
    head = f"{'format':<9} {'weights':>12} {'+ KV cache':>12} {'decode tok/s, 1 stream':>24} {'all streams':>12}"
    lines += [head, "-" * len(head)]
    for r in e["formats"]:
        one = f"{r['decode_tok_s_one_stream']:.1f}" if r["decode_tok_s_one_stream"] else "-"
        allv = f"{r['decode_tok_s_all_streams']:.1f}" if r["decode_tok_s_all_streams"] else "-"
        lines.append(f"{r['format']:<9} {_gib(r['weights_bytes']):>12} {_gib(r['total_bytes']):>12} {one:>24} {allv:>12}")
    lines.append("")
    lines.append(f"KV cache for {e['context']} tokens x {e['concurrency']} sequences, by format:")
    for k in e["kv_formats"]:
        lines.append(f"  {k['format']:<9} {k['bytes_per_token'] / 1024:8.1f} KiB per token  {_gib(k['bytes_total']):>12}")
    r = e["rss_after_load"]
    lines.append(f"`tokenmill serve` after load (weights {r['weights']}"
                 + (f": {s['stored_types']}" if s.get("stored_types") else "")
                 + f", runtime {_gib(r['runtime_bytes'])}), by KV format: "
                 + ", ".join(f"{x['kv_format']} {_gib(x['rss_bytes'])}" for x in r["by_kv_format"]))
    lines.append("")
    lines.append("decode tok/s is an upper bound from bandwidth alone (weights + KV read once per step);"
                 " compute, attention and Python overheads come on top.")
    return "\n".join(lines)
