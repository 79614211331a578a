"""Random weights in a GGUF type's exact block layout, for tests and benchmarks.

Random bytes everywhere except the float16 scale fields, which get small finite values, so every
block is a valid block of its type (the same bytes a quantizer could have written). Dequantized
with the `gguf` package, such a matrix is the reference our kernels are checked against.
"""
from __future__ import annotations

import numpy as np

# type name -> (elements a block, bytes a block, byte offsets of the float16 scales in a block)
LAYOUTS = {
    "F16": (1, 2, ()), "BF16": (1, 2, ()),
    "Q4_0": (32, 18, (0,)), "Q4_1": (32, 20, (0, 2)), "Q5_0": (32, 22, (0,)), "Q5_1": (32, 24, (0, 2)),
    "Q8_0": (32, 34, (0,)), "Q4_K": (256, 144, (0, 2)), "Q5_K": (256, 176, (0, 2)),
    "Q6_K": (256, 210, (208,)),
}


def random_blocks(type_name: str, rows: int, cols: int, rng: np.random.Generator,
                  scale: float = 1.0) -> np.ndarray:
    """(rows, cols / block * block_bytes) uint8: random weights of that type whose dequantized
    values are roughly scale * N(0, 1) / sqrt(cols) (the size of a trained layer's weights)."""
    elems, nbytes, scales = LAYOUTS[type_name]
    if cols % elems:
        raise ValueError(f"{type_name} needs columns in multiples of {elems}, got {cols}")
    std = scale / np.sqrt(cols)
    if type_name in ("F16", "BF16"):
        w = (rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(std))
        if type_name == "F16":
            return w.astype(np.float16).view(np.uint8)
        return (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    blocks = rng.integers(0, 256, size=(rows, cols // elems, nbytes), dtype=np.uint8)
    # the size of one code step: codes span 16 (4-bit), 32, 64 or 256 levels (Q8_0)
    levels = {"Q4_0": 16, "Q4_1": 16, "Q5_0": 32, "Q5_1": 32, "Q8_0": 256, "Q4_K": 16 * 32,
              "Q5_K": 32 * 32, "Q6_K": 64 * 64}[type_name]  # K-quants: times their sub-scales
    step = 3.5 * std / levels
    for i, off in enumerate(scales):
        v = rng.uniform(0.5, 1.5, size=blocks.shape[:2]) * step
        if i == 1:  # a minimum (Q4_1 / Q5_1 m is added, K-quant dmin is subtracted)
            v = v * (-8 if type_name in ("Q4_1", "Q5_1") else 4)
        blocks[..., off:off + 2] = v.astype(np.float16)[..., None].view(np.uint8)
    if type_name == "Q6_K":  # int8 sub-block scales: keep them positive-ish and moderate
        blocks[..., 192:208] = rng.integers(-64, 64, size=(*blocks.shape[:2], 16)).astype(np.int8).view(np.uint8)
    return blocks.reshape(rows, -1)


def dequantize(type_name: str, raw: np.ndarray, cols: int) -> np.ndarray:
    """(rows, row_bytes) uint8 -> (rows, cols) float32, by the gguf package's dequantizers."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize
    if type_name in ("F16", "BF16"):  # plain floats (the package leaves BF16 bytes as they are)
        h = np.ascontiguousarray(raw).view(np.uint16).reshape(raw.shape[0], cols)
        return h.view(np.float16).astype(np.float32) if type_name == "F16" else \
            (h.astype(np.uint32) << 16).view(np.float32)
    return gguf_dequantize(raw, GGMLQuantizationType[type_name]).reshape(raw.shape[0], cols).astype(np.float32)


# Real models' shapes (Llama 3.x); the vocabulary is the bundled SmolLM2's (49,152 tokens)
SHAPES = {
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192, tied=True, rope_factor=32.0),
    "3b": dict(hidden=3072, layers=28, heads=24, kv_heads=8, ffn=8192, tied=True, rope_factor=32.0),
    "8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, tied=False, rope_factor=8.0),
}

# llama.cpp's file types: (most matrices, the ones it gives more bits, output / tied embeddings)
FILE_TYPES = {
    "Q4_K_M": ("Q4_K", "Q6_K", "Q6_K"), "Q5_K_M": ("Q5_K", "Q6_K", "Q6_K"),
    "Q6_K": ("Q6_K", "Q6_K", "Q6_K"), "Q8_0": ("Q8_0", "Q8_0", "Q8_0"), "Q4_0": ("Q4_0", "Q4_0", "Q6_K"),
}


def _more_bits(i: int, n: int) -> bool:
    # llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_plan(shape: dict, file_type: str) -> list[tuple[str, tuple[int, int] | tuple[int], str]]:
    """(GGUF name, (rows, cols) or (n,), type name) in llama.cpp's order, with its Q4_K_M choices:
    v and down projections of the _more_bits layers and the output matrix in Q6_K."""
    main, more, out = FILE_TYPES[file_type]
    H, F, L = shape["hidden"], shape["ffn"], shape["layers"]
    D = H // shape["heads"]
    kv = shape["kv_heads"] * D
    plan = [("token_embd.weight", (49152, H), out if shape["tied"] else main),
            ("rope_freqs.weight", (D // 2,), "F32")]
    for i in range(L):
        t = more if _more_bits(i, L) else main
        plan += [(f"blk.{i}.attn_norm.weight", (H,), "F32"),
                 (f"blk.{i}.attn_q.weight", (H, H), main), (f"blk.{i}.attn_k.weight", (kv, H), main),
                 (f"blk.{i}.attn_v.weight", (kv, H), t), (f"blk.{i}.attn_output.weight", (H, H), main),
                 (f"blk.{i}.ffn_norm.weight", (H,), "F32"), (f"blk.{i}.ffn_gate.weight", (F, H), main),
                 (f"blk.{i}.ffn_up.weight", (F, H), main), (f"blk.{i}.ffn_down.weight", (H, F), t)]
    plan.append(("output_norm.weight", (H,), "F32"))
    if not shape["tied"]:
        plan.append(("output.weight", (49152, H), out))
    return plan


def write_random_gguf(path: str, shape: dict, file_type: str = "Q4_K_M", seed: int = 0,
                      name: str = "random") -> None:
    """A llama GGUF of random weights at `shape` (see SHAPES) in `file_type`'s layout, with the
    bundled SmolLM2's tokenizer and chat template. Written one tensor at a time."""
    import gguf

    from . import default_model_path
    from .gguf_header import read_header
    meta, _, _ = read_header(default_model_path())
    rng = np.random.default_rng(seed)
    H, L = shape["hidden"], shape["layers"]
    D = H // shape["heads"]
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_context_length(shape.get("context", 131072))
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(shape["ffn"])
    w.add_head_count(shape["heads"])
    w.add_head_count_kv(shape["kv_heads"])
    w.add_rope_dimension_count(D)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(49152)
    w.add_file_type({"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "Q8_0": 7, "Q4_0": 2}[file_type])
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    w.add_token_merges(meta["tokenizer.ggml.merges"])
    w.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
    w.add_pad_token_id(meta["tokenizer.ggml.padding_token_id"])
    w.add_add_bos_token(False)
    w.add_chat_template(meta["tokenizer.chat_template"])
    plan = tensor_plan(shape, file_type)

    def data(tname, dims, kind):
        if kind == "F32":
            if tname == "rope_freqs.weight":  # llama 3's long-context divisors (factor, 1 .. 4 blend)
                from ..layers.rope import _llama3_inv_freq
                inv = 1.0 / (500000.0 ** (np.arange(0, D, 2, dtype=np.float32) / D))
                scaled = _llama3_inv_freq(torch_tensor(inv), {"factor": shape["rope_factor"]}).numpy()
                return (inv / scaled).astype(np.float32)
            return (1.0 + 0.1 * rng.standard_normal(dims)).astype(np.float32)
        rows, cols = dims
        return random_blocks(kind, rows, cols, rng, scale=1.0 if "embd" not in tname else 8.0)

    for tname, dims, kind in plan:
        if kind == "F32":
            w.add_tensor_info(tname, dims, np.dtype(np.float32), int(np.prod(dims)) * 4)
        else:
            elems, nbytes, _ = LAYOUTS[kind]
            byte_shape = (dims[0], dims[1] // elems * nbytes)
            w.add_tensor_info(tname, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                              raw_dtype=gguf.GGMLQuantizationType[kind])
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for tname, dims, kind in plan:
        w.write_tensor_data(data(tname, dims, kind))
    w.close()


def torch_tensor(a: np.ndarray):
    import torch
    return torch.from_numpy(a)
