"""Engine configuration. The CLI maps its flags one-to-one onto these fields."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class EngineConfig:
    model: str | None = None              # .gguf file or Hugging Face directory; None: bundled SmolLM2
    device: str = "auto"                  # auto | cpu | cuda
    dtype: str = "auto"                   # auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16 | float16
    quantization: str = "auto"            # auto (on CPU a GGUF file's own blocks, else int8; none on CUDA) | none | int8 | q4_1 | gguf
    kv_cache_memory_gib: float = 1.0      # memory budget of the paged KV cache
    kv_cache_dtype: str = "auto"          # auto (int8 on CPU with quantized weights, else dtype) | float32 | float16 | bfloat16 | int8
    block_size: int = 16                  # tokens per KV block
    max_num_seqs: int = 64                # running requests at most
    max_num_batched_tokens: int = 512     # tokens per engine step (prefill chunks + decodes)
    max_model_len: int | None = None      # context length; None: the model's own
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    num_threads: int | None = None        # torch intra-op threads; None: all cores
    speculation: str = "ngram"            # ngram (prompt-lookup drafts, exact) | off
    spec_max_draft: int = 8               # draft tokens per step at most (adapted per request)
    spec_max_batch: int = 4               # no drafts while more requests than this decode
    show_progress: bool = True

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError("device must be auto, cpu or cuda")
        if self.quantization not in ("auto", "none", "int8", "q4_1", "gguf"):
            raise ValueError("quantization must be auto, none, int8, q4_1 or gguf")
        if self.speculation not in ("ngram", "off"):
            raise ValueError("speculation must be ngram or off")
        if self.spec_max_draft < 0 or self.spec_max_batch < 0:
            raise ValueError("spec_max_draft and spec_max_batch must be non-negative")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError("dtype must be auto, float32, bfloat16 or float16")
        if self.kv_cache_dtype not in ("auto", "float32", "float16", "bfloat16", "int8"):
            raise ValueError("kv_cache_dtype must be auto, float32, float16, bfloat16 or int8")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.kv_cache_memory_gib <= 0:
            raise ValueError("kv_cache_memory_gib must be positive")
        if self.model is not None:
            self.model = os.path.expanduser(self.model)
