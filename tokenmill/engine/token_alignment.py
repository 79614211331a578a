"""Keep a grammar's mask aligned with how the model tokenizes text.

A grammar speaks in bytes, the model in tokens, and the mask is where the two meet. Two ways
the plain mask pulls a small model off its own distribution (SmolLM2-135M, a City schema,
5 prompts x 50 seeds, max_tokens 300: 26 of 250 answers ran a string to max_tokens at
temperature 1 with the plain mask, 3 with both rules; at 0.8, 32 and 0; with the int8 KV cache
29 and 1, 43 and 2):

- Forced text in a foreign tokenization. After `{"name` the grammar forces `": "`. The mask
  allows `":` but also `"` alone, and after `":` both ` "` and a bare ` `; a model that draws
  the bare space has never seen `": ` + `"` split that way and loses its footing. When the
  grammar forces text, only its canonical tokens are allowed: llguidance's fast-forward tokens
  when it has them, else the tokens that cover all the forced bytes (not a strict prefix).
- Mass lost at a token boundary. When a list must close (maxItems reached), the model's mass on
  `",` (close the string, then another item) is masked, though its first byte, closing the
  string, is allowed; what is left is mostly "keep writing the string". A forbidden token whose
  bytes start with an allowed token's bytes gives its probability to the longest such token.

Both act on one constrained row's logits, before temperature and the other sampling filters;
a row without a grammar is untouched. GrammarCompiler.token_alignment = False turns them off.
On the CPU one C++ pass does the masking and the credit (csrc/grammar_mask.cpp); the PyTorch
functions here are the reference it is tested against, and the path elsewhere.
"""
from __future__ import annotations

import torch

from ..model.layers.native import fused_ops

_NEG_INF = float("-inf")
_CREDIT_TOKENS = 32     # the most probable forbidden tokens: where the lost mass sits
_CREDIT_WINDOW = 8.0    # a forbidden token e^8 times less likely than the best allowed one gives nothing


class TokenBytes:
    """The byte string of every token, and each token's shorter tokens that are its prefixes."""

    def __init__(self, ll_tokenizer, vocab_size: int):
        raw = [b"" if ll_tokenizer.is_special_token(i) else ll_tokenizer.decode_bytes([i])
               for i in range(vocab_size)]
        self.by_bytes: dict[bytes, int] = {}
        for i, b in enumerate(raw):
            if b:
                self.by_bytes.setdefault(b, i)
        chains = [[self.by_bytes[b[:n]] for n in range(len(b) - 1, 0, -1) if b[:n] in self.by_bytes]
                  for b in raw]
        # ragged, ~0.5 MB for 49k tokens (a padded (V, 54) table was 21 MB of server RSS):
        # token i's prefix tokens, longest first, are flat[start[i]:start[i + 1]]
        self.start = torch.tensor([0] + [len(c) for c in chains], dtype=torch.int32).cumsum(0).to(torch.int32)
        self.flat = torch.tensor([t for c in chains for t in c] + [-1], dtype=torch.int32)

    def prefixes(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (K,) -> (K, D) their prefix tokens, longest first, -1 padded."""
        start = self.start[tokens].long()
        count = self.start[tokens + 1].long() - start
        depth = max(1, int(count.max()))
        col = torch.arange(depth)
        idx = torch.where(col < count[:, None], start[:, None] + col, self.flat.shape[0] - 1)
        return self.flat[idx].long()


_SHIFTS = torch.arange(32, dtype=torch.int32)


def allowed_tokens(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """bitmask (ceil(V/32),) int32, bit j of word i = token 32*i+j allowed -> (V,) bool.
    Plain torch: llguidance's own helper is a torch.compile kernel, which would make the first
    constrained request wait seconds for a compiler."""
    return (((bitmask.unsqueeze(-1) >> _SHIFTS) & 1) == 1).flatten()[:vocab]


def forced_prefix_tokens(forced: bytes, tb: TokenBytes) -> list[int]:
    """The tokens whose bytes are a prefix of the forced text (or all of it)."""
    found = (tb.by_bytes.get(forced[:n]) for n in range(1, len(forced) + 1))
    return [t for t in found if t is not None]


def _bit(bitmask: torch.Tensor, t: int) -> bool:
    return bool((int(bitmask[t >> 5]) >> (t & 31)) & 1)


def aligned_mask(matcher, row: torch.Tensor, bitmask: torch.Tensor, tb: TokenBytes) -> torch.Tensor:
    """row (V,) logits, bitmask (ceil(V/32),) int32 of the grammar's allowed tokens -> the
    masked row (written in place where it can be), with forced text in its canonical tokens
    and prefix credit."""
    ff = matcher.compute_ff_tokens()
    if ff and _bit(bitmask, ff[0]):  # llguidance's fast-forward token: the only choice
        keep = row[ff[0]].item()
        row.fill_(_NEG_INF)
        row[ff[0]] = keep
        return row
    forced = matcher.compute_ff_bytes()
    # strict prefixes of the forced bytes (a bare ` ` when ` "` is forced) go, unless nothing
    # would be left; tokens inside the forced text get no credit
    removed = [t for t in forced_prefix_tokens(forced[:-1], tb) if _bit(bitmask, t)]
    excluded = forced_prefix_tokens(forced, tb)
    kern = fused_ops(row)
    if kern is not None:
        return kern.grammar_mask(row if row.is_contiguous() else row.contiguous(), bitmask, torch.tensor(removed, dtype=torch.long),
                                 torch.tensor(excluded, dtype=torch.long), tb.start, tb.flat,
                                 _CREDIT_TOKENS, _CREDIT_WINDOW)
    allowed = allowed_tokens(bitmask, row.shape[0])
    if removed:
        narrowed = allowed.clone()
        narrowed[removed] = False
        if bool(narrowed.any()):
            allowed = narrowed
    return credit_prefixes(row.cpu(), allowed, tb, excluded).to(row.device)


def credit_prefixes(logits: torch.Tensor, allowed: torch.Tensor, tb: TokenBytes,
                    excluded: list[int] = ()) -> torch.Tensor:
    """logits (V,) of one row, allowed (V,) bool -> masked logits in which each of the most
    probable forbidden tokens adds its probability to its longest allowed prefix token (in
    logit space, so a temperature applied later sees the combined mass). The excluded tokens
    (those inside the forced text) get no credit: the model's mass on ` a` where the grammar
    forces a space then a value does not mean "a bare space" (which would then stand in a split
    it never saw)."""
    out = logits.masked_fill(~allowed, _NEG_INF)
    forbidden = logits.masked_fill(allowed, _NEG_INF)
    top = out.max()
    if not bool(forbidden.max() > top - _CREDIT_WINDOW):  # the usual case inside a string
        return out
    if excluded:
        allowed = allowed.clone()
        allowed[list(excluded)] = False
    vals, cand = forbidden.topk(min(_CREDIT_TOKENS, logits.shape[0]))   # (K,) most probable forbidden
    cand = cand[vals > top - _CREDIT_WINDOW]
    pre = tb.prefixes(cand)                                    # (K, depth), longest first
    ok = (pre >= 0) & allowed[pre.clamp(min=0)]
    has = ok.any(1)
    if not bool(has.any()):
        return out
    first = ok.to(torch.uint8).argmax(1)                       # the longest allowed prefix
    src, dst = cand[has], pre[has, first[has]]
    dst, slot = dst.unique(return_inverse=True)
    gained = torch.zeros(dst.shape[0], dtype=logits.dtype).index_add_(0, slot, (logits[src] - top).exp())
    out[dst] = torch.logaddexp(out[dst], gained.log() + top)
    return out
