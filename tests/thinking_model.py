"""A tiny thinking model whose answer is known in advance: `I think</think>Yes!`.

Its vocabulary is the tiny byte tokenizer's plus `<think>` and `</think>` (added, not special,
as Qwen3 has them), and its chat template opens the think block itself unless
enable_thinking is false (as Qwen3's does). The weights make it a bigram model: attention and
MLP write nothing (o_proj, down_proj zero), so the last hidden state is the current token's
embedding, and the output row of each token in the script points at its predecessor's
embedding. Greedy decoding then follows the script token by token.
"""
from __future__ import annotations

import json
import os

import torch
from tokenizers import AddedToken

from tiny_models import EOS, SPECIALS, make_hf_model, make_tokenizer

THINK_TOKENS = ["<think>", "</think>"]
VOCAB = 256 + len(SPECIALS) + len(THINK_TOKENS)
OPEN_ID, CLOSE_ID = 256 + len(SPECIALS), 256 + len(SPECIALS) + 1
REASONING, ANSWER = "I think", "Yes!"
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n"
            "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
            "{% else %}<think>\n{% endif %}{% endif %}")


def script_ids() -> list[int]:
    """What follows the prompt's last token ('\\n'), EOS last."""
    return [*REASONING.encode(), CLOSE_ID, *ANSWER.encode(), EOS]


def save_thinking_model(path: str, endless: bool = False, context: int = 512) -> str:
    """endless: `I think\nI think\n...` without end (its 'k' leads back to '\n'), for budgets."""
    model = make_hf_model("llama", seed=3, vocab_size=VOCAB, num_hidden_layers=1, max_position_embeddings=context)
    chain = [ord("\n"), *script_ids()]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        # the script's tokens get orthogonal embeddings: a wrong successor scores 0 exactly
        basis, _ = torch.linalg.qr(torch.randn(emb.shape[1], len(chain)))
        for i, t in enumerate(dict.fromkeys(chain)):
            emb[t] = basis[:, i]
        head = model.lm_head.weight
        head.zero_()
        for cur, nxt in zip(chain, chain[1:]):
            if endless and cur == ord("k"):
                nxt = ord("\n")
            head[nxt] += 3.0 * emb[cur] / emb[cur].norm()
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok = make_tokenizer()
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    assert tok.token_to_id("</think>") == CLOSE_ID
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "chat_template": TEMPLATE}, f)
    return path
