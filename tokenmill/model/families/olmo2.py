"""OLMo 2: no norm before attention or MLP; an RMSNorm on each one's output, inside the residual;
q and k normed over the whole projection (all heads at once) before the rotary."""
from .base import Family


def _hf(cfg: dict) -> dict:
    if cfg.get("sliding_window") or "sliding_attention" in (cfg.get("layer_types") or []):
        raise ValueError("olmo3's sliding-window layers are not supported")
    return {"qk_norm": "full", "pre_norms": False, "post_norms": True}


FAMILY = Family("olmo2", ("olmo2",), from_hf=_hf, from_gguf=lambda get: {"qk_norm": "full", "pre_norms": False, "post_norms": True},
                layer_tensors={"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
                               "post_attention_norm": "post_attention_layernorm",
                               "post_ffw_norm": "post_feedforward_layernorm"})
