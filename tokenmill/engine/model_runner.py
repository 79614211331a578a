"""Scheduled batch -> one forward pass -> logits of the rows that need a next token.

Owns the model, the device and the paged KV cache tensors. The cache is sized from a memory
budget (EngineConfig.kv_cache_memory_gib), not a fixed number of sequences.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from ..config import EngineConfig
from ..model.layers.attention import AttentionMetadata, cache_row_bytes, cache_row_width
from ..model.layers.hugepages import huge_zeros_begin, move_packed_weights
from ..model.layers.native import kernels
from ..model.layers.quantized import _native as native_int8
from ..model.layers.linear import weights_on_meta
from ..model.layers.quantized import quantize_as_loaded, quantize_model
from ..model.layers.gguf_linear import NATIVE_TYPES
from ..model.llama import LlamaForCausalLM, build_gguf_model
from .request import Request
from .scheduler import ScheduledBatch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


@dataclass
class WorkCounter:
    """What the forward passes did (cumulative): for utilisation estimates in benchmarks."""
    steps: int = 0
    tokens: int = 0          # rows through the decoder layers
    logit_rows: int = 0      # rows through the output layer
    context_reads: int = 0   # per step and sequence, the context length whose K/V is read
    attn_pairs: int = 0      # (query, key) pairs attended

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


def _return_freed_memory() -> None:
    """Hand the fp32 weights that quantization just freed back to the OS. glibc keeps freed
    heap for reuse otherwise: measured RSS after loading int8 SmolLM2, 789 MB -> 513 MB."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def auto_quantization(checkpoint, device: torch.device) -> str:
    """none on CUDA. On CPU, for a GGUF file whose matrices are mostly quantized: a Q4_1 file's
    blocks in the 16-row records of the AVX-512 VNNI kernel (q4_1, with the C++ decode loop), any
    other quantized file's own blocks as they are (gguf: Q4_K_M reads 4.8 bits a weight where int8
    reads 8); float files (F32, F16, BF16) and Hugging Face directories int8."""
    if device.type != "cpu":
        return "none"
    types = checkpoint.matrix_types() if hasattr(checkpoint, "matrix_types") else {}
    main = max(types, key=types.get) if types else None
    if main == "Q4_1" and native_int8() is not None:
        return "q4_1"
    if main in NATIVE_TYPES and main not in ("F16", "BF16") and kernels() is not None:
        return "gguf"
    return "int8"


def _pool_rows(req: Request, start: int, row: int, n: int) -> range:
    """The rows of a prompt chunk that its pooling reads."""
    mode = req.params.pooling
    if mode == "mean":
        return range(row, row + n)
    if mode == "cls":
        return range(row, row + 1) if start == 0 else range(0)
    return range(row + n - 1, row + n) if start + n == req.num_prompt_tokens else range(0)


class ModelRunner:
    def __init__(self, config: EngineConfig, checkpoint):
        self.device = resolve_device(config.device)
        if config.dtype == "auto":
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = _DTYPES[config.dtype]
        if self.device.type == "cpu":
            torch.set_num_threads(config.num_threads or os.cpu_count() or 1)
        cfg = self.model_config = checkpoint.config
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        self.quantization = config.quantization
        if self.quantization == "auto":
            self.quantization = auto_quantization(checkpoint, self.device)
        native = self.quantization == "gguf"
        if native and (self.device.type != "cpu" or not hasattr(checkpoint, "native_weights")
                       or kernels() is None or self.dtype != torch.float32):
            raise ValueError("quantization gguf runs a GGUF file's blocks on CPU in float32, with the "
                             "C++ kernels built")
        # int8 / q4_1 on CPU: each linear quantized as soon as it is loaded (its float weight made
        # only then), so a model never exists whole in float32
        streamed = not native and self.device.type == "cpu" and self.quantization in ("int8", "q4_1")
        try:
            if native:  # matrices stay in the file's blocks: no float copy is ever made
                self.model = build_gguf_model(cfg)
            elif streamed:
                with weights_on_meta():
                    self.model = LlamaForCausalLM(cfg).eval()
            else:
                with torch.device(self.device):
                    self.model = LlamaForCausalLM(cfg).eval()
        finally:
            torch.set_default_dtype(default_dtype)
        self.block_size = config.block_size
        # With quantized weights on CPU the K/V rows are int8 with a scale each (attention.py):
        # 0.53x the bytes of float16 that decode reads per token and that the cache holds, for
        # +0.03% perplexity (SmolLM2-135M, fp32 weights, 2,048-token windows; `tokenmill eval
        # perplexity --kv-cache-dtype auto int8`). Without the C++ kernels float16 (the PyTorch
        # path would dequantize every read). fp32 mode keeps fp32, the reference. Only for the
        # plain llama decoder, where it was measured: Gemma 3 270M's greedy answers (head_dim
        # 256, q/k normed) kept 4 of 12 with int8 rows and 7 with float16 (bench/gemma3_agreement.py).
        if config.kv_cache_dtype == "int8":
            self.kv_dtype = torch.int8
        elif config.kv_cache_dtype != "auto":
            self.kv_dtype = _DTYPES[config.kv_cache_dtype]
        elif self.device.type == "cpu" and self.quantization in ("int8", "q4_1", "gguf"):
            self.kv_dtype = torch.int8 if kernels() is not None and cfg.plain_llama else torch.float16
        else:
            self.kv_dtype = self.dtype
        self.kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cache_row_bytes(self.kv_dtype, cfg.head_dim)
        self._size_pools(cfg, config)
        # heads first; the last dim is head_dim, or head_dim + 4 for int8 rows and their scale
        row = (config.block_size, cache_row_width(self.kv_dtype, cfg.head_dim))
        windowed = self.windowed_layers
        shapes = [(cfg.num_layers - sum(windowed), 2, cfg.num_kv_heads, self.num_blocks, *row),
                  (sum(windowed), 2, cfg.num_kv_heads, self.local_blocks, *row)]
        sizes = [math.prod(sh) for sh in shapes]
        # One allocation for all layers, every page faulted in at start: RSS shows the real
        # footprint from the first request, and a machine without the memory fails here, not
        # mid-traffic. Zeros matter too: padded reads of unwritten slots are multiplied by 0.
        if self.device.type == "cpu":  # in huge pages: attention reads blocks all over it
            # faulted in by a thread while the weights are read (both are the kernel's work; at
            # 1 GiB it takes about as long as mapping a 1B model's weights)
            kv, kv_faulted = huge_zeros_begin((sum(sizes),), self.kv_dtype)
        else:
            kv, kv_faulted = torch.zeros(sum(sizes), dtype=self.kv_dtype, device=self.device), lambda: None
        global_kv, local_kv = (part.view(sh) for part, sh in zip(kv.split(sizes), shapes))
        weights = tqdm(checkpoint.native_weights() if native else checkpoint.weights(),
                       total=checkpoint.num_tensors(), unit="tensor", desc=f"Loading {cfg.name}",
                       disable=not config.show_progress, leave=False)
        self.model.load_weights(weights, quantize_as_loaded(self.model, self.quantization) if streamed else None)
        if not native:
            quantize_model(self.model, self.quantization)
        if self.device.type == "cpu" and not native:  # (native weights are read into huge pages)
            move_packed_weights(self.model)  # huge pages: fewer TLB misses a step (hugepages.py)
        if not native:  # native weights free nothing: the trim would only wait on the KV thread
            _return_freed_memory()
        kv_faulted()

        if config.max_model_len:  # the context asked for (the engine may lower it to the cache's)
            for rope in self.model.rotaries():
                rope.trim(config.max_model_len)
        self.kv_caches, counts = [], [0, 0]
        for w in windowed:  # each layer's (k, v) in its pool's part
            part = local_kv if w else global_kv
            self.kv_caches.append((part[counts[w], 0], part[counts[w], 1]))
            counts[w] += 1
        self._block_offsets = torch.arange(config.block_size)
        self.work = WorkCounter()
        self.prompt_logits, self.pooled = [], []
        # the C++ attention kernel: CPU, float32, head_dim a multiple of 16; built (or found in
        # torch's extension cache) now, so that no request waits for a compiler
        self.use_native = (self.device.type == "cpu" and self.dtype == torch.float32
                           and self.kv_dtype in (torch.float32, torch.float16, torch.int8)
                           and cfg.head_dim % 16 == 0 and kernels() is not None)

    def _size_pools(self, cfg, config) -> None:
        """num_blocks (the global layers' pool) and local_blocks (the sliding-window layers', or
        0 where a model has not both kinds: block_manager.py) from the KV memory. The windowed
        pool gets what max_num_seqs windows and one step's chunk hold, the global one the rest."""
        bs = config.block_size
        layer_block = 2 * cfg.num_kv_heads * cache_row_bytes(self.kv_dtype, cfg.head_dim) * bs
        budget = int(config.kv_cache_memory_gib * 2**30)
        self.windowed_layers = [bool(cfg.sliding_window) and (cfg.window_layers is None or bool(cfg.window_layers[i]))
                                for i in range(cfg.num_layers)]
        n_local = sum(self.windowed_layers)
        n_global = cfg.num_layers - n_local
        self.window = cfg.sliding_window if 0 < n_local < cfg.num_layers else 0
        if not self.window:
            self.windowed_layers = [False] * cfg.num_layers  # one pool: every layer keeps every block
            self.local_blocks, self.num_blocks = 0, budget // (layer_block * cfg.num_layers)
        else:
            per_seq = -(-self.window // bs) + 1  # blocks a window of keys can span
            want = config.max_num_seqs * per_seq + -(-config.max_num_batched_tokens // bs) + 1
            self.local_blocks = min(want, budget // (layer_block * cfg.num_layers))
            self.num_blocks = (budget - self.local_blocks * layer_block * n_local) // (layer_block * n_global)
        if self.num_blocks < 1:
            raise ValueError("kv_cache_memory_gib is too small for a single KV block")

    def describe_weights(self) -> dict:
        """What --quantization resolved to and what that means for this model (start-up log,
        /tokenmill/info): for gguf, the matrices' GGML types as they run."""
        from collections import Counter

        from ..model.layers.gguf_linear import GGUFLinear
        q = self.quantization
        types = Counter(t for m in self.model.modules() if isinstance(m, GGUFLinear) for t in m.type_names)
        what = {"gguf": "the file's own blocks", "q4_1": "the file's Q4_1 blocks in VNNI records",
                "int8": "int8 per output channel", "none": f"{self.dtype} (not quantized)"}[q]
        detail = ", ".join(f"{n} x {k}" for k, n in types.most_common())
        return {"quantization": q, "matrix_types": dict(types), "kv_cache_dtype": str(self.kv_dtype).removeprefix("torch."),
                "summary": f"{q} ({what}{': ' + detail if detail else ''})"}

    def _slots(self, block_table: list[int], num_ctx: int) -> torch.Tensor:
        # (ctx,) cache slot of every context position, through a request's block table
        table = torch.tensor(block_table, dtype=torch.long)
        return (table[:, None] * self.block_size + self._block_offsets).flatten()[:num_ctx]

    def _pool(self, req: Request, start: int, row: int, n: int, hidden: torch.Tensor, index: dict) -> None:
        """Fold this chunk's final hidden states (after the last norm, as llama.cpp's
        --embedding reads them) into req's pooled vector; done at the prompt's last token."""
        mode = req.params.pooling
        if mode == "mean":
            part = hidden[index[row]:index[row + n - 1] + 1].float().sum(0)
            req.pooled = part if start == 0 or req.pooled is None else req.pooled + part  # start 0: (re)computed from scratch
        elif mode == "cls" and start == 0:
            req.pooled = hidden[index[row]].float()
        if start + n == req.num_prompt_tokens:
            if mode == "last":
                req.pooled = hidden[index[row + n - 1]].float()
            vec = req.pooled / req.num_prompt_tokens if mode == "mean" else req.pooled
            self.pooled.append((req, vec.cpu()))

    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor | None, list[Request]]:
        """Returns logits for the requests whose computation catches up with their tokens
        this step (they get a new token), and those requests: one row each, or 1 + len(draft)
        rows for a request with a speculative draft."""
        self.work.steps += 1
        input_ids: list[int] = []
        positions: list[int] = []
        seqs, local_seqs = [], []
        sample_rows: list[int] = []
        sample_reqs: list[Request] = []
        prompt_rows = []
        pool_rows = []           # [(request, first position, first row, count)] of embedding requests
        self.prompt_logits = []  # [(request, first position, logits (k, V))] for prompt logprobs
        self.pooled = []         # [(request, embedding (hidden,))] whose prompt is done this step
        for req, n in zip(batch.requests, batch.num_new_tokens):
            start = req.num_computed_tokens
            row = len(input_ids)
            k = len(req.draft)  # speculative tokens after the real ones: each row gets logits
            input_ids.extend((req.all_token_ids + req.draft)[start:start + n] if k else
                             req.all_token_ids[start:start + n])
            positions.extend(range(start, start + n))
            seqs.append((row, n, self._slots(req.block_table, start + n)))
            if self.window:
                local_seqs.append((row, n, self._slots(req.local_table, start + n)))
            self.work.tokens += n
            self.work.context_reads += start + n
            self.work.attn_pairs += n * start + n * (n + 1) // 2  # causal (query, key) pairs
            if req.params.pooling is not None:  # prefill only: its rows are pooled, nothing sampled
                pool_rows.append((req, start, row, n))
            elif start + n == req.num_tokens + k:
                sample_rows.extend(range(row + n - 1 - k, row + n))
                sample_reqs.append(req)
            if req.params.prompt_logprobs is not None and start < req.num_prompt_tokens - 1:
                # rows at positions start.. predict prompt tokens start+1..: (first row, count)
                last = min(start + n, req.num_prompt_tokens - 1)
                prompt_rows.append((req, start, row, last - start))
        for rope in self.model.rotaries():
            rope.cover(max(positions) + 1)
        meta = AttentionMetadata.build(seqs, self.device, self.block_size, self.use_native)
        if self.window:  # the windowed layers read their own pool
            meta.local = AttentionMetadata.build(local_seqs, self.device, self.block_size, self.use_native)
        ids = torch.tensor(input_ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        # only the rows whose logits are read leave the model (the rest of a prompt chunk skips
        # the last layer past its keys and values): index[r] is row r's place in hidden
        wanted = sorted(set(sample_rows).union(*(range(row, row + k) for _, _, row, k in prompt_rows),
                                               *(_pool_rows(*p) for p in pool_rows)))
        index = {r: i for i, r in enumerate(wanted)}
        out_rows = None if len(wanted) == len(input_ids) else torch.tensor(wanted, dtype=torch.long)
        hidden = self.model(ids, pos, meta, self.kv_caches, out_rows)  # (len(wanted), hidden)
        for req, start, row, k in prompt_rows:
            first = index[row]
            self.prompt_logits.append((req, start, self.model.compute_logits(hidden[first:first + k])))
        for req, start, row, n in pool_rows:
            self._pool(req, start, row, n, hidden, index)
        if not sample_rows:
            return None, []
        self.work.logit_rows += len(sample_rows)
        rows = torch.tensor([index[r] for r in sample_rows], dtype=torch.long, device=self.device)
        return self.model.compute_logits(hidden[rows]), sample_reqs
