"""The grammar mask kept aligned with the tokenization (engine/token_alignment.py), on a
hand-made vocabulary where tokens are prefixes of one another, as in a real BPE vocabulary."""
import math

import torch

from tokenmill.engine.token_alignment import TokenBytes, canonical_forced, credit_prefixes

VOCAB = ['"', '",', '"]', ' ', ' "', ' "P', 'a', 'ab', 'abc', ':', '":', ' a', '<eos>']


class FakeLLTokenizer:
    def is_special_token(self, i):
        return VOCAB[i] == "<eos>"

    def decode_bytes(self, ids):
        return "".join(VOCAB[i] for i in ids).encode()


class FakeMatcher:
    def __init__(self, ff_tokens=(), ff_bytes=b""):
        self.ff_tokens, self.ff_bytes = list(ff_tokens), ff_bytes

    def compute_ff_tokens(self):
        return self.ff_tokens

    def compute_ff_bytes(self):
        return self.ff_bytes


def ids(*pieces):
    return [VOCAB.index(p) for p in pieces]


def mask(*pieces):
    m = torch.zeros(len(VOCAB), dtype=torch.bool)
    m[ids(*pieces)] = True
    return m


TB = TokenBytes(FakeLLTokenizer(), len(VOCAB))


def test_prefix_table_lists_shorter_tokens_longest_first():
    table = TB.prefixes(torch.tensor(ids('abc', ' "P', '<eos>', 'a')))
    assert table.tolist() == [ids('ab', 'a'), ids(' "', ' '), [-1, -1], [-1, -1]]  # specials credit nothing


def test_a_forbidden_token_gives_its_probability_to_its_longest_allowed_prefix():
    logits = torch.randn(len(VOCAB))
    logits[VOCAB.index('",')] = 3.0   # the model wants to close the string and go on
    allowed = mask('"', '"]', 'a', 'ab')
    out = credit_prefixes(logits, allowed, TB)
    q, a, c = VOCAB.index('"'), VOCAB.index('",'), VOCAB.index('":')
    # '",' and '":' both start with the allowed '"'
    assert math.isclose(out[q].item(), torch.logsumexp(logits[[q, a, c]], 0).item(), rel_tol=1e-6)
    # 'abc' is forbidden: its mass goes to 'ab' (longest), not to 'a'
    ab, abc = VOCAB.index('ab'), VOCAB.index('abc')
    assert math.isclose(out[ab].item(), torch.logaddexp(logits[ab], logits[abc]).item(), rel_tol=1e-6)
    assert out[VOCAB.index('a')] == logits[VOCAB.index('a')]
    assert torch.isinf(out[~allowed]).all() and torch.isfinite(out[allowed]).all()
    # the total probability of the allowed tokens is what they had plus what was credited
    credited = logits[[a, c, abc]].exp().sum() + logits[allowed].exp().sum()
    assert math.isclose(out[allowed].exp().sum().item(), credited.item(), rel_tol=1e-5)


def test_nothing_is_credited_without_an_allowed_prefix():
    logits = torch.zeros(len(VOCAB))
    allowed = mask(':')   # no token starts with ':'
    out = credit_prefixes(logits, allowed, TB)
    assert out[VOCAB.index(':')] == 0 and torch.isinf(out[~allowed]).all()


def test_text_the_grammar_forces_gets_no_credit():
    # after `":` the grammar forces a space then a value; the model's mass on ` a` (a word, not
    # a JSON value) must not become mass on a bare space
    logits = torch.zeros(len(VOCAB))
    logits[VOCAB.index(' a')] = 5.0
    allowed = mask(' ', ' "')
    out = credit_prefixes(logits, allowed, TB, forced=b" ")
    assert out[VOCAB.index(' ')] == 0
    assert out[VOCAB.index(' ')] < credit_prefixes(logits, allowed, TB)[VOCAB.index(' ')]


def test_forced_text_comes_in_its_canonical_tokens():
    allowed = mask('"', '":')
    only = canonical_forced(FakeMatcher(ff_tokens=ids('":')), allowed, TB)
    assert only.nonzero().flatten().tolist() == ids('":')
    # no fast-forward token (what follows could still merge) but forced bytes ' "': the bare
    # space, a strict prefix of them, goes; the tokens that cover them stay
    allowed = mask(' ', ' "', ' "P')
    narrowed = canonical_forced(FakeMatcher(ff_bytes=b' "'), allowed, TB)
    assert narrowed.nonzero().flatten().tolist() == ids(' "', ' "P')
    # nothing forced: unchanged
    assert torch.equal(canonical_forced(FakeMatcher(), allowed, TB), allowed)
    # only the prefix is allowed: kept rather than leaving nothing
    assert torch.equal(canonical_forced(FakeMatcher(ff_bytes=b' "'), mask(' '), TB), mask(' '))
