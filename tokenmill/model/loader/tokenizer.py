"""Tokenizer: the `tokenizers` library, built from a GGUF vocabulary or a tokenizer.json.

Wraps encode/decode, the special token ids the engine stops on, and the chat template.
"""
from __future__ import annotations

import json
import os

from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers

from .chat_template import ChatTemplate

# llama.cpp's `tokenizer.ggml.pre` names -> split regexes (before byte-level mapping)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Mistral Nemo / Ministral (tekken) and GPT-4o (Phi-4-mini): cased words split at case changes
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                 r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTION +
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTION +
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# GGUF token types
_CONTROL, _USER_DEFINED = 3, 4


class Tokenizer:
    def __init__(self, tok: HFTokenizer, bos_id: int | None, eos_ids: list[int],
                 add_bos: bool, chat_template: str | None):
        self.tok = tok
        self.bos_id = bos_id
        self.eos_ids = [i for i in eos_ids if i is not None]
        self.eos_id = self.eos_ids[0] if self.eos_ids else None
        self.add_bos = add_bos and bos_id is not None
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        bos = tok.id_to_token(bos_id) if bos_id is not None else ""
        eos = tok.id_to_token(self.eos_id) if self.eos_id is not None else ""
        self.chat_template = ChatTemplate(chat_template, bos, eos) if chat_template else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    @property
    def special_ids(self) -> set[int]:
        """Ids of the special (control) tokens: <|im_start|>, BOS, EOS, ..."""
        return {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}

    def piece(self, i: int) -> str:
        """One token's own text (a lone part of a multi-byte character shows as U+FFFD)."""
        return self.tok.decode([i], skip_special_tokens=False)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """kwargs: variables the template may read (enable_thinking, tools...)."""
        if self.chat_template is None:
            raise ValueError("this model has no chat template; use a plain prompt instead")
        return self.chat_template.render(messages, add_generation_prompt, **kwargs)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> list[int]:
        text = self.apply_chat_template(messages, add_generation_prompt, **kwargs)
        # The template writes bos itself when the model wants it; don't add a second one.
        return self.encode(text, add_special_tokens=False)


_GPT2 = None      # byte-level's own (GPT-2's) regex
_DIGITS = "digits"  # each digit a piece of its own, then GPT-2's regex

# tokenizer.ggml.pre (llama.cpp's names) -> (the split, whether a word the vocabulary holds skips
# the merges, as llama.cpp's ignore_merges); tests/model/test_pre_tokenizers.py checks each
# against llama.cpp's own table, through Hugging Face tokenizers
PRE_TOKENIZERS = {
    "default": (_GPT2, False), "gpt-2": (_GPT2, False), "olmo": (_GPT2, False),
    "llama-bpe": (_LLAMA3_SPLIT, True), "llama3": (_LLAMA3_SPLIT, True), "dbrx": (_LLAMA3_SPLIT, False),
    "qwen2": (_QWEN2_SPLIT, False), "smollm": (_DIGITS, False), "refact": (_DIGITS, False),
    "tekken": (_TEKKEN_SPLIT, True), "gpt-4o": (_GPT4O_SPLIT, False),
}
BYTE_LEVEL_PRES = tuple(PRE_TOKENIZERS)


def _byte_level_pre_tokenizer(pre: str):
    if pre not in PRE_TOKENIZERS:  # never split text some other way than the model's own
        raise ValueError(f"unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); supported: "
                         f"{', '.join(BYTE_LEVEL_PRES)}")
    split = PRE_TOKENIZERS[pre][0]
    if split is _DIGITS:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if split is _GPT2:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    # SentencePiece BPE keeps scores, not merges: every split of a vocab token into two vocab
    # tokens is a merge, ranked by the merged token's score.
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for t, i in vocab.items():
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in vocab and b in vocab:
                ranked.append((-scores[i], vocab[a], vocab[b], a, b))
    ranked.sort()
    return [(a, b) for *_, a, b in ranked]


def tokenizer_from_gguf(meta: dict, family_template: str | None = None, end_of_turn: str | None = None) -> Tokenizer:
    """family_template, end_of_turn: the family's turn format and the token ending a turn, for a
    file without a chat template (a base model)."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    if kind == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        pre = meta.get("tokenizer.ggml.pre", "default")
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                                     ignore_merges=PRE_TOKENIZERS.get(pre, (None, False))[1]))
        tok.pre_tokenizer = _byte_level_pre_tokenizer(pre)
        tok.decoder = decoders.ByteLevel()
    elif kind == "llama":
        unk = meta.get("tokenizer.ggml.unknown_token_id", 0)
        merges = _spm_merges(tokens, meta["tokenizer.ggml.scores"])
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=tokens[unk],
                                     fuse_unk=True, byte_fallback=True))
        norms = [normalizers.Replace(" ", "\u2581")]
        if meta.get("tokenizer.ggml.add_space_prefix", True):
            norms.insert(0, normalizers.Prepend("\u2581"))
        tok.normalizer = normalizers.Sequence(norms)
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r}; supported: gpt2 (byte-level BPE), "
                         "llama (SentencePiece BPE)")
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty in (_CONTROL, _USER_DEFINED)]
    tok.add_special_tokens(special)
    bos = meta.get("tokenizer.ggml.bos_token_id")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    eos_ids = [eos]
    eot = meta.get("tokenizer.ggml.eot_token_id")
    if eot is not None and eot != eos:
        eos_ids.append(eot)
    add_bos = meta.get("tokenizer.ggml.add_bos_token", kind == "llama")
    template = meta.get("tokenizer.chat_template")
    if template is None and family_template is not None:
        template = family_template
        if end_of_turn in vocab and vocab[end_of_turn] not in eos_ids:
            eos_ids.append(vocab[end_of_turn])
    return Tokenizer(tok, bos, eos_ids, bool(add_bos), template)


def tokenizer_from_hf_dir(path: str, generation_eos: list[int] | None = None) -> Tokenizer:
    tok = HFTokenizer.from_file(os.path.join(path, "tokenizer.json"))
    cfg = {}
    cfg_path = os.path.join(path, "tokenizer_config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)

    def token_id(key):
        t = cfg.get(key)
        if isinstance(t, dict):
            t = t.get("content")
        return tok.token_to_id(t) if t else None

    eos_ids = [token_id("eos_token")] + list(generation_eos or [])
    eos_ids = list(dict.fromkeys(i for i in eos_ids if i is not None))
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja_path = os.path.join(path, "chat_template.jinja")
    if template is None and os.path.exists(jinja_path):
        with open(jinja_path) as f:
            template = f.read()
    # tokenizer.json's post-processor adds bos itself if the model wants it; we add it by hand.
    tok.post_processor = None
    return Tokenizer(tok, token_id("bos_token"), eos_ids, bool(cfg.get("add_bos_token", False)), template)
