"""Gemma 3 (text): embeddings times sqrt(hidden); RMSNorm with (1 + w) (llama.cpp's converter
adds the 1 to the weights, a config.json model is shifted as it loads); a norm before and after
both attention and MLP; q and k normed per head; GeGLU with the tanh gelu; five sliding-window
layers to one global, the windowed ones with a rotary base of their own (unscaled); scores
scaled by query_pre_attn_scalar ** -0.5. gemma2.py is this family with soft-capped scores and
logits, no q/k norms, and windows on every other layer."""
from .base import Family

_PATTERN = 6  # llama.cpp's default for gemma3: every 6th layer global


def hf_switches(cfg: dict, pattern: int) -> dict:
    """What Gemma 2 and 3 share, from config.json: layer i is global where (i + 1) % pattern == 0."""
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types") or ["full_attention" if (i + 1) % cfg.get("sliding_window_pattern", pattern) == 0
                                       else "sliding_attention" for i in range(n)]
    return {"pre_norms": True, "post_norms": True, "hidden_act": "gelu_tanh",
            "norm_offset": 1.0, "embedding_scale": cfg["hidden_size"] ** 0.5,
            "attention_scale": cfg.get("query_pre_attn_scalar", cfg.get("head_dim", 256)) ** -0.5,
            "sliding_window": int(cfg.get("sliding_window") or 0),
            "window_layers": tuple(t == "sliding_attention" for t in types)}


def gguf_switches(get, pattern: int, big_layers: int) -> dict:
    """The same from GGUF metadata (norm weights already hold the 1). llama.cpp scales scores by
    1/sqrt(head_dim), but by 1/sqrt(hidden / heads) for the 27B (big_layers layers: its
    query_pre_attn_scalar, which the file does not carry)."""
    n = int(get("block_count"))
    p = get("attention.sliding_window_pattern", pattern)
    windowed = tuple(bool(x) for x in p) if isinstance(p, list) else tuple(i % int(p) < int(p) - 1 for i in range(n))
    hidden = int(get("embedding_length"))
    scale = (hidden / int(get("attention.head_count"))) ** -0.5 if n == big_layers else None
    return {"pre_norms": True, "post_norms": True, "hidden_act": "gelu_tanh",
            "embedding_scale": hidden ** 0.5, "attention_scale": scale,
            "sliding_window": int(get("attention.sliding_window", 0)), "window_layers": windowed}


def _hf(cfg: dict) -> dict:
    rope = cfg.get("rope_parameters") or {}
    full = rope.get("full_attention", rope)
    local = rope.get("sliding_attention", {})
    if cfg.get("attn_logit_softcapping") or cfg.get("final_logit_softcapping"):
        raise ValueError("gemma3 with logit softcapping is not supported")
    return {**hf_switches(cfg, _PATTERN), "qk_norm": "head",
            "rope_theta": float(cfg.get("rope_theta", full.get("rope_theta", 1_000_000.0))),
            "rope_scaling": full if full.get("rope_type") not in (None, "default") else cfg.get("rope_scaling"),
            "rope_local_theta": float(cfg.get("rope_local_base_freq", local.get("rope_theta", 10_000.0)))}


def _gguf(get) -> dict:
    if get("final_logit_softcapping"):
        raise ValueError("gemma3 with logit softcapping is not supported")
    return {**gguf_switches(get, _PATTERN, big_layers=62), "qk_norm": "head",
            "rope_local_theta": float(get("rope.freq_base_swa", 10_000.0))}


# Gemma's turns: user and model, a system message put at the head of the next user turn
TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] ~ '\n\n' %}"
    "{% else %}{{ '<start_of_turn>' ~ ('model' if m['role'] == 'assistant' else 'user') ~ '\n' }}"
    "{% if m['role'] != 'assistant' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

# a layer's tensors beyond llama's (GGUF name -> Hugging Face name)
NORMS = {"post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
         "post_ffw_norm": "post_feedforward_layernorm"}

FAMILY = Family("gemma3", ("gemma3_text",), from_hf=_hf, from_gguf=_gguf,
                chat_template=TEMPLATE, end_of_turn="<end_of_turn>",
                layer_tensors={"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", **NORMS})
