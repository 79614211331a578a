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
