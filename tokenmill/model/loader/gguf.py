"""GGUF file -> ModelConfig, Tokenizer, and (Hugging Face name, tensor) pairs.

Two ways to the weights: `weights()` dequantizes each tensor to float32 with the `gguf` package
(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K and the rest it knows), for the float and
int8 paths; `native_weights()` reads each matrix's blocks as they are, straight from the file
into one weight arena (no float copy; see model/layers/gguf_linear.py). llama.cpp's converter
permutes q/k rows of llama models for its interleaved rotary layout; we permute them back to the
Hugging Face layout (whole rows, so blocks move as they are).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

import mmap

import numpy as np
import torch

from ..config import ModelConfig
from ..families import FAMILIES, by_gguf_arch
from .gguf_header import read_header
from .tokenizer import Tokenizer, tokenizer_from_gguf

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _open(path: str, big_arrays: bool = True):
    try:
        return read_header(path, big_arrays)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e


_PARSED: OrderedDict = OrderedDict()  # (path, size, mtime) -> [metadata, tensors, tokenizer or None]
_PARSED_KEEP = 4
_PARSED_LOCK = threading.Lock()


def _file_key(path: str) -> tuple:
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def _parsed(path: str) -> list:
    """The header and tokenizer of a file, kept for the last few files: a model unloaded and
    loaded again (a server switching models) skips reading its vocabulary and merges and
    building its tokenizer (0.13 s at 49k tokens); the weights are always read anew."""
    key = _file_key(path)
    with _PARSED_LOCK:
        if key in _PARSED:
            _PARSED.move_to_end(key)
            return _PARSED[key]
    meta, tensors, buf = _open(path)
    buf.close()
    with _PARSED_LOCK:
        entry = _PARSED.setdefault(key, [meta, tensors, None])
        while len(_PARSED) > _PARSED_KEEP:
            _PARSED.popitem(last=False)
        return entry


def header_metadata(path: str) -> dict:
    """A file's metadata: the kept header where the file was parsed lately (the model just
    loaded), else the header read without its vocabulary and merges (0.04 s at 49k tokens)."""
    key = _file_key(path)
    with _PARSED_LOCK:
        if key in _PARSED:
            return _PARSED[key][0]
    meta, _, buf = _open(path, big_arrays=False)
    buf.close()
    return meta


def _resident_share(path: str) -> float:
    """The share of a file's pages in the page cache (mincore over a mapping of it, which
    faults nothing in); 0.0 where that cannot be asked."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            view = np.frombuffer(m, dtype=np.uint8)
            vec = np.zeros(-(-len(m) // mmap.PAGESIZE), dtype=np.uint8)
            ok = libc.mincore(view.ctypes.data, len(m), vec.ctypes.data) == 0
            del view
            return float((vec & 1).mean()) if ok else 0.0
        finally:
            m.close()
    except (OSError, ValueError, AttributeError):
        return 0.0


def _read_ahead(path: str) -> None:
    """Read the whole file once in a thread of its own (reads release the GIL), so that from a
    cold page cache the disk works while the header, the tokenizer and the model are built,
    and the mapping's populate (_populate) then finds the pages in memory. (posix_fadvise's
    WILLNEED read almost nothing ahead on the filesystems of our test machines.)"""
    if _resident_share(path) > 0.9:  # in the page cache already: reading it again only takes a core
        return

    def read():
        try:
            with open(path, "rb", buffering=0) as f:
                buf = bytearray(16 << 20)
                while f.readinto(buf):
                    pass
        except OSError:
            pass  # read_header says what is wrong with the file
    threading.Thread(target=read, name="tokenmill-read-ahead", daemon=True).start()


def hf_name(gguf_name: str, layer_names: dict = _LAYER_NAMES) -> str | None:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        layer, kind, param = parts[1], parts[2], parts[3]
        if kind not in layer_names:
            return None
        return f"model.layers.{layer}.{layer_names[kind]}.{param}"
    if parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    # inverse of llama.cpp convert_hf_to_gguf.LlamaModel.permute: rows (n_head, 2, d/2) were
    # reordered to (n_head, d/2, 2); swap them back.
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def config_from_metadata(meta: dict, tensor_names: set[str]) -> ModelConfig:
    arch = meta.get("general.architecture")
    family = by_gguf_arch(arch)

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    scaling = None
    kind = get("rope.scaling.type")
    if kind == "linear":
        scaling = {"type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif kind not in (None, "none"):
        raise ValueError(f"unsupported rope scaling {kind!r} in {arch}.rope.scaling.type")
    fields = dict(
        architecture=arch,
        vocab_size=int(get("vocab_size", len(meta["tokenizer.ggml.tokens"]))),
        hidden_size=hidden,
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        intermediate_size=int(get("feed_forward_length")),
        max_position=int(get("context_length", 2048)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        head_dim=int(get("attention.key_length", hidden // heads)),
        rotary_dim=int(get("rope.dimension_count", 0)),
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        tie_word_embeddings="output.weight" not in tensor_names,
        name=meta.get("general.name", "model"),
    )
    switches = family.from_gguf(get)
    if get("attention.sliding_window") and not switches.get("sliding_window"):
        raise ValueError(f"{arch} with sliding-window attention ({arch}.attention.sliding_window) is not supported")
    return ModelConfig(**{**fields, **switches})


_Q4_1 = 3  # GGMLQuantizationType.Q4_1


class GGUFCheckpoint:
    def __init__(self, path: str):
        self.path = path
        _read_ahead(path)
        self._parsed = _parsed(path)
        self.meta, self.tensors = self._parsed[0], self._parsed[1]
        with open(path, "rb") as f:  # the weights are read (or used in place) from this mapping
            self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        names = {t.name for t in self.tensors}
        self.config = config_from_metadata(self.meta, names)
        self.family = FAMILIES[self.config.architecture]
        self._layer_names = {**_LAYER_NAMES, **self.family.layer_tensors}
        unknown = sorted({n.split(".")[2] for n in names if n.startswith("blk.")} - set(self._layer_names))
        if unknown:  # a tensor we would not read: refused, never run without it
            raise ValueError(f"{path}: {self.config.architecture} tensors tokenmill does not run: {', '.join(unknown)}")
        if "rope_freqs.weight" in names:  # llama 3.1 scaling, baked in as per-frequency divisors
            self.config.rope_scaling = {"rope_type": "freq_factors", "factors": self._vector("rope_freqs.weight")}
        if "rope_factors_long.weight" in names:  # LongRoPE (phi3): both divisor sets, and their terms
            arch = self.config.architecture
            self.config.rope_scaling = {
                "rope_type": "longrope", "long_factor": self._vector("rope_factors_long.weight"),
                "short_factor": self._vector("rope_factors_short.weight"),
                "original_max_position_embeddings": int(self.meta[f"{arch}.rope.scaling.original_context_length"]),
                "attention_factor": self.meta.get(f"{arch}.rope.scaling.attn_factor")}

    def _vector(self, name: str) -> list[float]:
        return self._dequantize(next(t for t in self.tensors if t.name == name)).reshape(-1).tolist()

    def _hf_name(self, gguf_name: str) -> str | None:
        return hf_name(gguf_name, self._layer_names)

    @property
    def quantization(self) -> str:
        """The file's most common type among 2-D weights, e.g. "Q4_1"."""
        from collections import Counter
        from gguf import GGMLQuantizationType
        kinds = Counter(GGMLQuantizationType(t.type_code).name for t in self.tensors if len(t.shape) == 2)
        return kinds.most_common(1)[0][0] if kinds else "F32"

    def tokenizer(self) -> Tokenizer:
        with _PARSED_LOCK:
            if self._parsed[2] is None:
                self._parsed[2] = tokenizer_from_gguf(self.meta, self.family.chat_template, self.family.end_of_turn)
            return self._parsed[2]

    def num_tensors(self) -> int:
        return len(self.tensors)

    def _dequantize(self, t) -> np.ndarray:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize
        qtype = GGMLQuantizationType(t.type_code)
        shape = tuple(int(d) for d in reversed(t.shape))  # row-major: (out, in)
        block, type_size = GGML_QUANT_SIZES[qtype]
        raw = np.frombuffer(self._buf, dtype=np.uint8, count=t.nbytes, offset=t.offset)
        raw = raw.reshape(*shape[:-1], shape[-1] // block * type_size)
        if qtype == GGMLQuantizationType.F32:
            return raw.view(np.float32).reshape(shape)
        try:
            return dequantize(raw, qtype).reshape(shape)
        except NotImplementedError as e:
            raise ValueError(f"{t.name}: tensor type {qtype.name} cannot be dequantized") from e

    def weights(self):
        """(Hugging Face name, fp32 tensor). A Q4_1 matrix also carries its blocks' float16
        scales and minimums as tensor.q4_1 = (d, m), each (rows, cols / 32), so that the q4_1
        format can keep the file's 4-bit weights exactly."""
        from concurrent.futures import ThreadPoolExecutor
        wanted = [(t, self._hf_name(t.name)) for t in self.tensors if self._hf_name(t.name) is not None]
        # numpy releases the GIL in the bulk of dequantization: the next tensor is dequantized
        # while this one is used, and no more (pool.map would run ahead and hold every tensor)
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(self._dequantize, wanted[0][0]) if wanted else None
            for i, (t, name) in enumerate(wanted):
                w = ahead.result()
                ahead = pool.submit(self._dequantize, wanted[i + 1][0]) if i + 1 < len(wanted) else None
                tensor = torch.from_numpy(np.array(self._unpermute(t, w), dtype=np.float32))  # writable
                del w
                if t.type_code == _Q4_1 and len(t.shape) == 2:
                    d, m = self._q4_1_scales(t)
                    tensor.q4_1 = (torch.from_numpy(self._unpermute(t, d).copy()),
                                   torch.from_numpy(self._unpermute(t, m).copy()))
                yield name, tensor

    def matrix_types(self) -> dict[str, int]:
        """GGML type name -> number of 2-D weights of that type."""
        from collections import Counter
        from gguf import GGMLQuantizationType
        return dict(Counter(GGMLQuantizationType(t.type_code).name for t in self.tensors
                            if len(t.shape) == 2 and self._hf_name(t.name) is not None))

    def native_weights(self):
        """(Hugging Face name, tensor): float32 for vectors, a RawMatrix for every matrix. Each
        matrix the kernels run as stored is used in place from a private mapping of the file, read
        in at once (as llama.cpp's mmap): loading holds the weights once, no copy, no float. llama's
        q and k (rows reordered) and any matrix whose type the kernels do not run (F32, Q2_K, ...;
        requantized to Q8_0, or BF16 where its width is not a multiple of 32, one tensor at a
        time) go to a huge-page arena sized from the header."""
        from ..layers.gguf_linear import RawMatrix, runs_natively
        from ..layers.hugepages import Arena
        wanted = [(t, self._hf_name(t.name)) for t in self.tensors if self._hf_name(t.name) is not None]
        plans = []
        for t, name in wanted:
            if len(t.shape) != 2:
                plans.append((t, name, None, 0))
                continue
            cols, rows = int(t.shape[0]), int(t.shape[1])
            code = t.type_code if runs_natively(t.type_code, cols) else (8 if cols % 32 == 0 else 30)
            nbytes = t.nbytes if code == t.type_code else (rows * cols // 32 * 34 if code == 8 else rows * cols * 2)
            plans.append((t, name, code, nbytes))
        # matrices the kernels run as stored stay in the file's mapping (read in now); the rest go
        # to an arena: requantized ones, and llama's q and k, whose rows are reordered on the way
        arena = Arena(max(64, sum(-(-n // 64) * 64 for t, _, code, n in plans
                                  if code is not None and (code != t.type_code or self._permuted(t)))))
        with open(self.path, "rb") as f:
            cow = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: never writes the file
            _populate(cow)
            base = torch.frombuffer(cow, dtype=torch.uint8)
            for t, name, code, nbytes in plans:
                if code is None:
                    yield name, torch.from_numpy(np.array(self._unpermute(t, self._dequantize(t)), dtype=np.float32))
                    continue
                cols, rows = int(t.shape[0]), int(t.shape[1])
                stored = base[t.offset:t.offset + t.nbytes].view(rows, t.nbytes // rows)
                if code == t.type_code and not self._permuted(t):
                    data = stored
                else:
                    data = arena.take((rows, nbytes // rows), torch.uint8)
                    src = stored.numpy() if code == t.type_code else _requantize(self._dequantize(t), code)
                    data.copy_(torch.from_numpy(np.ascontiguousarray(self._unpermute(t, src))))
                    _release(cow, t.offset, t.nbytes)  # the file's copy is not used: out of RSS
                yield name, RawMatrix(code, rows, cols, data)

    def _permuted(self, t) -> bool:
        """q and k of a family llama.cpp permutes: their rows are reordered on load (unpermute_qk)."""
        return self.family.permuted_qk and t.name.endswith((".attn_q.weight", ".attn_k.weight"))

    def _q4_1_scales(self, t) -> tuple[np.ndarray, np.ndarray]:
        # a Q4_1 block: float16 d, float16 m, 16 bytes of nibbles (20 bytes per 32 weights)
        rows, cols = int(t.shape[1]), int(t.shape[0])
        raw = np.frombuffer(self._buf, dtype=np.uint8, count=t.nbytes, offset=t.offset)
        blocks = raw.reshape(rows, cols // 32, 20)
        return (np.ascontiguousarray(blocks[..., 0:2]).view(np.float16)[..., 0],
                np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0])

    def _unpermute(self, t, w: np.ndarray) -> np.ndarray:
        cfg = self.config
        if self.family.permuted_qk:
            if t.name.endswith("attn_q.weight") or t.name.endswith("attn_q.bias"):
                return unpermute_qk(w, cfg.num_heads)
            if t.name.endswith("attn_k.weight") or t.name.endswith("attn_k.bias"):
                return unpermute_qk(w, cfg.num_kv_heads)
        return w


def _populate(m: mmap.mmap) -> None:
    """Read the whole mapping in now (MADV_POPULATE_READ, Linux 5.14+; else touch a byte a page),
    so that the server is ready with its weights in memory and no request waits on the disk."""
    try:
        m.madvise(22)  # MADV_POPULATE_READ
    except (OSError, ValueError):
        m.madvise(mmap.MADV_WILLNEED)
        view = np.frombuffer(m, dtype=np.uint8)
        int(view[::mmap.PAGESIZE].sum())


def _release(m: mmap.mmap, offset: int, nbytes: int) -> None:
    """Drop the whole pages of [offset, offset + nbytes) from this mapping (they stay in the page
    cache; untouched private pages are simply unmapped)."""
    start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (offset + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start:
        m.madvise(mmap.MADV_DONTNEED, start, end - start)


def _requantize(w: np.ndarray, code: int) -> np.ndarray:
    """float matrix (rows, cols) -> (rows, row_bytes) uint8 of Q8_0 (code 8) or BF16 (30)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if code == 30:  # round to nearest even
        bits = w.view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).view(np.uint8)
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize
    return quantize(w, GGMLQuantizationType.Q8_0).reshape(w.shape[0], -1)
