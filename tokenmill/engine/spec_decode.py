"""Speculative decoding without a draft model: prompt lookup (n-gram) drafts, verified in one pass.

Propose: when a request's last n tokens (n = max_n down to min_n) occurred earlier in its prompt
or output, the tokens that followed their latest earlier occurrence are its draft.
Verify: the step computes the real last token and the k draft tokens together (k + 1 rows: on a
CPU a decode step is paid in weight reads, and those are shared by the rows), and the sampler
draws a token for every row as if the drafts before it were accepted (penalties, min_tokens and a
grammar see that history; see DraftView).

Acceptance: row j's token t_j is drawn exactly as plain decoding would draw it (a seeded request
uses the same draws it would have used); the draft token d_j is accepted when t_j == d_j; the
first mismatch emits t_j instead and ends the step; when all k are accepted, the last row gives
one more token. With a one-token (point-mass) draft this is the rejection-sampling rule of
speculative sampling: d_j is accepted with probability p_j(d_j), and a rejected position draws
from the residual, p_j without d_j, renormalised. So sampled output keeps plain sampling's
distribution, a seeded request gives the same tokens with speculation on or off, and greedy
output is plain greedy output token for token (the rows are computed as decode rows are; see
attention.py on batch invariance).

Forced text: where a grammar forces the next tokens (a JSON key and its separators), those
tokens (llguidance's fast-forward tokens) are the draft, at any batch size; the aligned mask
allows nothing else there (token_alignment.py), so they are drawn, and accepted, as plain
decoding would draw them one step at a time.

Adaptive: each request keeps decayed counts of accepted and rejected draft tokens per length of
the matching n-gram, which give a per-token acceptance rate a; the draft length k maximises the
expected tokens per step, (1 + a + ... + a^k), over the step's cost, (1 + ROW_COST * k). A low
rate chooses k = 0 (no draft); the counts then drift back towards even odds, so the request
probes again later. Above
`max_batch` running requests no drafts are made: the batch already shares the weight reads.
"""
from __future__ import annotations

from dataclasses import dataclass

# Cost of one more row in a decode step, relative to the whole step: 0.07-0.15 for drafts of 1-8
# (int8 SmolLM2, 2 Zen4 cores, context 200; python bench/spec_row_cost.py).
ROW_COST = 0.11


@dataclass
class SpecConfig:
    max_draft: int = 8
    min_n: int = 1
    max_n: int = 4
    max_batch: int = 4


class NgramIndex:
    """Per request: n-gram -> the position right after its latest earlier occurrence."""

    def __init__(self, min_n: int, max_n: int):
        self.sizes = range(max_n, min_n - 1, -1)
        self.maps: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.indexed = 0  # n-grams ending before this index are in the maps

    def propose(self, tokens: list[int], k: int) -> tuple[list[int], int]:
        """(draft of at most k tokens, length of the n-gram that matched; 0: no match)"""
        last = len(tokens) - 1
        # index the n-grams ending at tokens[e] for e < last: each has a continuation
        for e in range(self.indexed, last):
            for n in self.sizes:
                if e + 1 >= n:
                    self.maps[n][tuple(tokens[e + 1 - n:e + 1])] = e + 1
        self.indexed = max(self.indexed, last)
        for n in self.sizes:  # longest match first
            if len(tokens) >= n:
                pos = self.maps[n].get(tuple(tokens[len(tokens) - n:]))
                if pos is not None:
                    return tokens[pos:pos + k], n
        return [], 0


class SpecState:
    """One request's drafting state: its n-gram index and acceptance counts, kept per length of
    the matching n-gram (a 4-token match predicts far better than a 1-token one)."""

    def __init__(self, cfg: SpecConfig):
        self.cfg = cfg
        self.index = NgramIndex(cfg.min_n, cfg.max_n)
        self.accepted = {n: 1.0 for n in range(cfg.min_n, cfg.max_n + 1)}  # decayed counts;
        self.rejected = dict(self.accepted)                                 # even odds at first
        self.last_n = 0  # the match length of the draft being verified

    def rate(self, n: int) -> float:
        return self.accepted[n] / (self.accepted[n] + self.rejected[n])

    def draft_len(self, n: int) -> int:
        a = self.rate(n)
        best, best_gain, expected = 0, 1.0, 1.0
        for k in range(1, self.cfg.max_draft + 1):
            expected += a ** k
            gain = expected / (1 + ROW_COST * k)
            if gain > best_gain:
                best, best_gain = k, gain
        return best

    def observe(self, num_draft: int, num_accepted: int) -> None:
        n = self.last_n
        if n is None:  # a grammar's forced tokens, not an n-gram guess
            return
        self.accepted[n] = 0.8 * self.accepted[n] + num_accepted
        self.rejected[n] = 0.8 * self.rejected[n] + (num_accepted < num_draft)

    def idle(self, n: int) -> None:
        """A match not drafted: drift back towards even odds, so that length probes again."""
        self.accepted[n] = 0.9 * self.accepted[n] + 0.05
        self.rejected[n] = 0.9 * self.rejected[n] + 0.05


class DraftView:
    """A request seen as if the first j draft tokens were accepted: what the sampler and the
    logits processors read for verification row j."""

    def __init__(self, req, j: int):
        self._req = req
        extra = req.draft[:j]
        self.output_token_ids = req.output_token_ids + extra
        self.all_token_ids = req.all_token_ids + extra

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def __getattr__(self, name):  # params, eos_ids, generator, logits_processors, ...
        return getattr(self._req, name)


def eligible(req) -> bool:
    """Drafting is per request: off when asked (SamplingParams.speculative) and for the token
    explorer, which replays one step at a time from raw logits."""
    return req.params.speculative and not req.params.return_raw_logits


def propose(running, cfg: SpecConfig, max_model_len: int) -> None:
    """Set req.draft for each running request that is about to decode one token."""
    for r in running:
        r.draft = []
    decoding = [r for r in running if r.num_tokens - r.num_computed_tokens == 1]
    ngrams = len(decoding) <= cfg.max_batch
    for req in decoding:
        if not eligible(req):
            continue
        if req.spec is None:
            req.spec = SpecState(cfg)
        p = req.params
        room = max_model_len - req.num_tokens - 1
        if p.max_tokens is not None:
            room = min(room, p.max_tokens - req.num_output_tokens - 1)
        if room <= 0:
            continue
        forced = _forced(req, min(cfg.max_draft, room))
        if forced:  # text the grammar forces: drafted at any batch size, accepted as drawn
            req.draft, req.spec.last_n = forced, None
            continue
        if not ngrams:
            continue
        draft, n = req.spec.index.propose(req.all_token_ids, min(cfg.max_draft, room))
        if not draft:
            continue
        k = req.spec.draft_len(n)
        if k == 0:
            req.spec.idle(n)
            continue
        draft = draft[:k]
        req.spec.last_n = n
        for processor in req.logits_processors:  # a grammar keeps the drafts it can accept
            valid = getattr(processor, "valid_draft", None)
            if valid is not None and draft:
                draft = draft[:valid(req.output_token_ids, draft)]
        req.draft = draft


def _forced(req, k: int) -> list[int]:
    """Up to k tokens a logits processor (a grammar) says must come next, else []."""
    for processor in req.logits_processors:
        forced = getattr(processor, "forced_tokens", None)
        if forced is not None:
            tokens = forced(req.output_token_ids)[:k]
            if tokens:
                return tokens
    return []


def accept(req, row_tokens: list[int]) -> list[int]:
    """row_tokens: the token drawn at each of the k + 1 rows. Returns the tokens to emit:
    the accepted drafts, then the first mismatch (or the bonus token)."""
    draft = req.draft
    out = []
    for j, tok in enumerate(row_tokens):
        out.append(tok)
        if j == len(draft) or tok != draft[j]:
            break
    req.spec.observe(len(draft), len(out) - 1)
    return out
