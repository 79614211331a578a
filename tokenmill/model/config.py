"""Architecture hyper-parameters, filled in by a loader (GGUF metadata or config.json)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .families import FAMILIES

SUPPORTED_ARCHITECTURES = tuple(FAMILIES)


@dataclass
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    head_dim: int = 0
    attention_bias: bool = False  # qwen2: q/k/v projections carry a bias
    tie_word_embeddings: bool = False
    name: str = "model"
    extra: dict = field(default_factory=dict)
    # a family's switches over the llama decoder (families/), all off for llama itself
    qk_norm: str | None = None            # "head": RMSNorm per head of q and k; "full": over each projection
    pre_norms: bool = True                # norms on the attention's and the MLP's inputs
    post_norms: bool = False              # norms on their outputs, inside the residual
    norm_offset: float = 0.0              # a norm's weight is used as offset + w
    hidden_act: str = "silu"              # the MLP's gate: "silu" or "gelu_tanh"
    sliding_window: int = 0               # keys a windowed layer sees (0: none)
    window_layers: tuple | None = None    # per layer, True where the window applies
    rope_local_theta: float | None = None  # the windowed layers' rotary base, unscaled (gemma3)
    embedding_scale: float = 1.0          # the embeddings are multiplied by it
    attention_scale: float | None = None  # in place of head_dim ** -0.5
    residual_scale: float = 1.0           # each branch's output is multiplied by it before the add
    logit_scale: float = 1.0              # the logits are divided by it
    rope_layers: tuple | None = None      # per layer, False where it has no rotary
    attn_softcap: float = 0.0             # scores become c * tanh(s / c) before the softmax (gemma2)
    logit_softcap: float = 0.0            # and the logits likewise
    rotary_dim: int = 0                   # values of each head rotary turns (0: all; phi3's partial rotary)

    @property
    def plain_llama(self) -> bool:
        """No switch set: the C++ decode loop runs it."""
        return (self.qk_norm is None and self.pre_norms and not self.post_norms and self.embedding_scale == 1.0
                and self.norm_offset == 0.0 and self.hidden_act == "silu" and not self.sliding_window
                and self.attention_scale is None and self.residual_scale == 1.0 and self.logit_scale == 1.0
                and (self.rope_layers is None or all(self.rope_layers))
                and not self.attn_softcap and not self.logit_softcap
                and self.rotary_dim in (0, self.head_dim))

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; "
                f"tokenmill supports: {', '.join(SUPPORTED_ARCHITECTURES)}")
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")

    @property
    def num_parameters(self) -> int:
        """Weights of the architecture, whatever form they are kept in (packed or in blocks)."""
        H, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        layer = H * (q + 2 * kv) + q * H + 3 * H * self.intermediate_size + 2 * H
        if self.attention_bias:
            layer += q + 2 * kv
        layer += {"head": 2 * self.head_dim, "full": q + kv}.get(self.qk_norm, 0)
        embed = self.vocab_size * H * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embed + H
