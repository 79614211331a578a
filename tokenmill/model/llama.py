"""The decoder every family runs (families/): token ids + positions + attention metadata ->
hidden states -> logits. Llama as written; each other family is llama plus the switches its
ModelConfig carries (q/k norms, norms after the branches, multipliers, layers without rotary)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layer_loop import decode_plan
from .layers.attention import AttentionMetadata, paged_attention, write_cache
from .layers.gguf_linear import GGUFEmbedding, GGUFLinear
from .layers.linear import Linear, MergedLinear, empty_matrix, weights_on_meta
from .layers.native import fused_ops
from .layers.norm import RMSNorm
from .layers.rope import RotaryEmbedding


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = MergedLinear(cfg.hidden_size, {"q": q_size, "k": kv_size, "v": kv_size},
                                     bias=cfg.attention_bias)
        self.o_proj = Linear(q_size, cfg.hidden_size)
        self.split = (q_size, kv_size, kv_size)
        self.scale = cfg.attention_scale or cfg.head_dim ** -0.5
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm is not None:  # "head": over each head's D values; "full": over all of q (of k)
            per_head = cfg.qk_norm == "head"
            self.q_norm = RMSNorm(cfg.head_dim if per_head else q_size, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim if per_head else kv_size, cfg.rms_norm_eps)
        self.rotary = cfg.rope_layers is None or bool(cfg.rope_layers[layer])
        windowed = cfg.sliding_window > 0 and (cfg.window_layers is None or bool(cfg.window_layers[layer]))
        self.window = cfg.sliding_window if windowed else 0
        self.softcap = cfg.attn_softcap
        self.local_rope = windowed and cfg.rope_local_theta is not None  # the model's rope_local

    def _norm_qk(self, qkv: torch.Tensor) -> torch.Tensor:
        # qkv: (T, (Hq + 2 Hkv) * D) -> the same with q and k normed
        kern = fused_ops(qkv)
        if (self.qk_norm == "head" and kern is not None and qkv.is_contiguous()
                and self.q_norm.weight.dtype == torch.float32):  # each head in place
            kern.rms_norm_heads_(qkv, self.q_norm.weight, self.k_norm.weight, self.num_heads,
                                 self.num_kv_heads, self.q_norm.eps)
            return qkv
        q, k, v = qkv.split(self.split, dim=-1)
        if self.qk_norm == "head":
            q = self.q_norm(q.reshape(-1, self.head_dim)).view(q.shape)  # (T * Hq, D) rows
            k = self.k_norm(k.reshape(-1, self.head_dim)).view(k.shape)
        else:
            q, k = self.q_norm(q.contiguous()), self.k_norm(k.contiguous())
        return torch.cat([q, k, v], dim=-1)

    def forward(self, x, positions, rope, meta, k_cache, v_cache):
        T = x.shape[0]
        qkv = self.qkv_proj(x)                           # (T, (Hq + 2 Hkv) * D)
        if self.qk_norm is not None:
            qkv = self._norm_qk(qkv)
        kern = fused_ops(qkv)
        fused = (self.rotary and kern is not None and rope.cos.shape[1] == self.head_dim
                 and k_cache.dtype in (torch.float32, torch.float16, torch.int8))
        if fused:
            # rotary in place and the new k, v into the cache: one call
            kern.rope_and_cache(qkv, positions, rope.cos, rope.sin, k_cache, v_cache,
                                meta.slot_mapping, self.num_heads, self.num_kv_heads)
        q, k, v = qkv.split(self.split, dim=-1)
        q = q.view(T, self.num_heads, self.head_dim)     # (T, Hq, D)
        k = k.view(T, self.num_kv_heads, self.head_dim)  # (T, Hkv, D)
        v = v.view(T, self.num_kv_heads, self.head_dim)
        if not fused:
            if self.rotary:
                q, k = rope(positions, q, k)
            write_cache(k, v, k_cache, v_cache, meta)
        o = paged_attention(q, k_cache, v_cache, meta, self.scale, self.window, self.softcap)
        return self.o_proj(o.reshape(T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = MergedLinear(cfg.hidden_size, {"gate": cfg.intermediate_size,
                                                           "up": cfg.intermediate_size})
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size)
        if cfg.hidden_act not in ("silu", "gelu_tanh"):
            raise ValueError(f"unsupported activation {cfg.hidden_act!r}")
        self.gelu = cfg.hidden_act == "gelu_tanh"

    def forward(self, x):
        gate_up = self.gate_up_proj(x)  # (T, 2 * intermediate)
        kern = fused_ops(gate_up)
        if kern is not None:  # GeGLU (gemma) or SwiGLU in one pass
            return self.down_proj(kern.gelu_mul(gate_up) if self.gelu else kern.silu_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj((F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.pre_norms, self.post_norms, self.residual_scale = cfg.pre_norms, cfg.post_norms, cfg.residual_scale
        H, eps = cfg.hidden_size, cfg.rms_norm_eps
        if cfg.pre_norms:
            self.input_layernorm = RMSNorm(H, eps)
        self.self_attn = Attention(cfg, layer)
        # llama: the norm before the MLP (Hugging Face's name); post_norms: the attention's output norm
        self.post_attention_layernorm = RMSNorm(H, eps)
        if cfg.post_norms:
            if cfg.pre_norms:  # (gemma) then the norm before the MLP has a name of its own
                self.pre_feedforward_layernorm = RMSNorm(H, eps)
            self.post_feedforward_layernorm = RMSNorm(H, eps)
        self.mlp = MLP(cfg)

    def forward(self, x, residual, positions, rope, meta, kv):
        # x: the previous layer's output (for layer 0, the embeddings, and residual None);
        # residual: the stream before it. Returns this layer's (output, residual).
        if self.post_norms:  # h += post(attn(pre(h))); h += post(mlp(pre(h))), pre only where given
            h = x if residual is None else x + residual
            a = self.self_attn(self.input_layernorm(h) if self.pre_norms else h, positions, rope, meta, *kv)
            h = h + self.post_attention_layernorm(a)
            m = self.mlp(self.pre_feedforward_layernorm(h) if self.pre_norms else h)
            return self.post_feedforward_layernorm(m), h
        if residual is None:
            residual = x
            x = self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, positions, rope, meta, *kv)
        if self.residual_scale != 1.0:
            x = x * self.residual_scale
        x, residual = self.post_attention_layernorm(x, residual)
        x = self.mlp(x)
        return (x * self.residual_scale if self.residual_scale != 1.0 else x), residual


# Hugging Face parameter name suffix -> (module suffix, shard) for fused projections.
_SHARDS = {
    "self_attn.q_proj": ("self_attn.qkv_proj", "q"),
    "self_attn.k_proj": ("self_attn.qkv_proj", "k"),
    "self_attn.v_proj": ("self_attn.qkv_proj", "v"),
    "mlp.gate_proj": ("mlp.gate_up_proj", "gate"),
    "mlp.up_proj": ("mlp.gate_up_proj", "up"),
}


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        # _weight: no random init of a matrix that loading overwrites (or, on meta, replaces)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=empty_matrix(cfg.vocab_size, cfg.hidden_size))
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rope = RotaryEmbedding(cfg.rotary_dim or cfg.head_dim, cfg.max_position, cfg.rope_theta, cfg.rope_scaling)
        # windowed layers' own base (gemma3), unscaled
        self.rope_local = None if cfg.rope_local_theta is None else \
            RotaryEmbedding(cfg.rotary_dim or cfg.head_dim, cfg.max_position, cfg.rope_local_theta)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                out_rows: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids, positions: (T,) -> hidden: (T, hidden), or (R, hidden) for the rows out_rows
        # (int64, ascending) when given: the C++ loop then runs the last layer past its keys and
        # values for those rows only.
        x, residual = self.embed_tokens(input_ids), None
        if self.config.embedding_scale != 1.0:
            x = x * self.config.embedding_scale
        if meta.row_seq is not None:
            if not hasattr(self, "_plan"):  # tests set it to None for the Python layers
                self._plan = decode_plan(self, x)
            if self._plan is not None:  # every row to the attention kernel: the same calls, from C++
                if out_rows is None:
                    out_rows = torch.arange(len(input_ids))
                return self._plan.run(self, x, positions, meta, kv_caches, out_rows)
        for layer, kv in zip(self.layers, kv_caches):
            a = layer.self_attn
            rope = self.rope_local if a.local_rope else self.rope
            x, residual = layer(x, residual, positions, rope, meta.local if a.window and meta.local else meta, kv)
        hidden = self.norm(x, residual)[0]
        return hidden if out_rows is None else hidden[out_rows.to(hidden.device)]

    def rotaries(self) -> list[RotaryEmbedding]:
        return [r for r in (self.rope, self.rope_local) if r is not None]

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: (S, hidden) -> logits (S, vocab), always float32 for the sampler
        if self.lm_head is None:
            logits = F.linear(hidden, self.embed_tokens.weight).float()
        else:
            logits = self.lm_head(hidden).float()
        if self.config.logit_scale != 1.0:
            logits = logits / self.config.logit_scale
        if self.config.logit_softcap:  # gemma2
            logits = torch.tanh(logits / self.config.logit_softcap) * self.config.logit_softcap
        return logits

    def load_weights(self, weights, on_linear=None) -> None:
        """weights: iterable of (Hugging Face name, tensor). Fills fused projections by shard.
        on_linear(module name, module): called after each tensor loaded into a Linear (so that a
        caller can quantize it as soon as it is complete, before the next one is read)."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if name == "lm_head.weight" and self.lm_head is None:
                continue  # tied embeddings: the output layer is embed_tokens
            if not isinstance(tensor, torch.Tensor) and name.endswith(".weight") and not any(
                    f".{hf}." in name for hf in _SHARDS):
                self._load_raw(name.removesuffix(".weight"), tensor)  # a matrix in its file's blocks
                continue
            for hf, (ours, shard) in _SHARDS.items():
                if f".{hf}." in name:
                    layer_prefix, param = name.split(f".{hf}.")
                    module = self.get_submodule(f"{layer_prefix}.{ours}")
                    module.load_shard(shard, param, tensor)
                    loaded.add(f"{layer_prefix}.{ours}.{param}")
                    if on_linear is not None and isinstance(module, Linear):
                        on_linear(f"{layer_prefix}.{ours}", module)
                    break
            else:
                if name not in params:
                    continue  # e.g. rotary inv_freq buffers some checkpoints carry
                p = params[name]
                if p.shape != tensor.shape:
                    raise ValueError(f"{name}: expected shape {tuple(p.shape)}, got {tuple(tensor.shape)}")
                module_name, _, param = name.rpartition(".")
                module = self.get_submodule(module_name)
                if p.is_meta:  # built without memory (weights_on_meta): now it gets some
                    p = nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=False)
                    setattr(module, param, p)
                if self.config.norm_offset and isinstance(module, RMSNorm):
                    tensor = tensor + self.config.norm_offset  # (1 + w) norms as plain ones
                p.data.copy_(tensor)
                loaded.add(name)
                if isinstance(module, Linear):  # the whole of a fused projection (phi3): every shard
                    module.loaded.update((s, param) for s in (getattr(module, "shard_offsets", None) or {"": 0}))
                    if param == "weight":  # a Q4_1 matrix's block scales, if it has them
                        module.note_q4_1(0, tensor)
                    if on_linear is not None:
                        on_linear(module_name, module)
        missing = set(params) - loaded
        missing |= {f"{n}.weight" for n, m in self.named_modules() if isinstance(m, GGUFLinear) and not m.is_complete()}
        if missing:
            raise ValueError(f"checkpoint is missing weights: {sorted(missing)[:5]}")

    def _load_raw(self, module_name: str, m) -> None:
        """A RawMatrix (layers/gguf_linear.py) for a GGUFLinear, or the embeddings (and, tied, the
        output layer reading the same blocks)."""
        if module_name == "embed_tokens":
            self.embed_tokens = GGUFEmbedding(m)
            if self.config.tie_word_embeddings:
                self.lm_head = GGUFLinear(m.cols, m.rows)
                self.lm_head.load_part(0, m)
            return
        module = self.get_submodule(module_name)
        if not isinstance(module, GGUFLinear):
            raise ValueError(f"{module_name}: a raw GGUF matrix for a layer that is not a GGUFLinear")
        module.load_part(0, m)


def build_gguf_model(cfg: ModelConfig) -> LlamaForCausalLM:
    """A model whose linears are empty GGUFLinears, to be filled by load_weights from
    GGUFCheckpoint.native_weights(): its matrices are built on the meta device, so no float matrix
    is allocated; only the norms and rotary tables get memory."""
    with weights_on_meta():
        model = LlamaForCausalLM(cfg)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Linear):
                out_features, in_features = child.weight.shape
                new = GGUFLinear(in_features, out_features, bias=child.bias is not None)
                new.shard_offsets = dict(getattr(child, "shard_offsets", {}))
                setattr(module, child_name, new)
    model.embed_tokens = nn.Identity()  # replaced by a GGUFEmbedding while loading
    return model.eval()
