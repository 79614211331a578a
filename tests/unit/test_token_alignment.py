"""The grammar mask kept aligned with the tokenization (engine/token_alignment.py), on a
hand-made vocabulary where tokens are prefixes of one another, as in a real BPE vocabulary."""
import math

import torch

import pytest

from tokenmill.engine import token_alignment
from tokenmill.engine.token_alignment import TokenBytes, aligned_mask, credit_prefixes, forced_prefix_tokens
from tokenmill.model.layers.native import kernels

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
    out = credit_prefixes(logits, allowed, TB, excluded=forced_prefix_tokens(b" ", TB))
    assert out[VOCAB.index(' ')] == 0
    assert out[VOCAB.index(' ')] < credit_prefixes(logits, allowed, TB)[VOCAB.index(' ')]


def bits(allowed):
    """(V,) bool -> llguidance's bitmask, (ceil(V/32),) int32."""
    words = torch.zeros((allowed.shape[0] + 31) // 32, dtype=torch.int64)
    for t in allowed.nonzero().flatten().tolist():
        words[t >> 5] |= 1 << (t & 31)
    return (words - 2**32 * (words >= 2**31)).to(torch.int32)  # the same bits, as signed int32


def allowed_after(matcher, allowed, python=True, logits=None):
    logits = torch.zeros(len(VOCAB)) if logits is None else logits
    if python:  # the PyTorch reference, as on CUDA
        saved, token_alignment.fused_ops = token_alignment.fused_ops, lambda x: None
        try:
            return aligned_mask(matcher, logits, bits(allowed), TB)
        finally:
            token_alignment.fused_ops = saved
    return aligned_mask(matcher, logits, bits(allowed), TB)


@pytest.mark.parametrize("python", [True, False])
def test_forced_text_comes_in_its_canonical_tokens(python):
    if not python and kernels() is None:  # a machine without a compiler: only the Python path exists
        pytest.skip("no C++ kernels here")
    finite = lambda out: torch.isfinite(out).nonzero().flatten().tolist()  # noqa: E731
    assert finite(allowed_after(FakeMatcher(ff_tokens=ids('":')), mask('"', '":'), python)) == ids('":')
    # no fast-forward token (what follows could still merge) but forced bytes ' "': the bare
    # space, a strict prefix of them, goes; the tokens that cover them stay
    forced = FakeMatcher(ff_bytes=b' "')
    assert finite(allowed_after(forced, mask(' ', ' "', ' "P'), python)) == ids(' "', ' "P')
    # nothing forced: unchanged
    assert finite(allowed_after(FakeMatcher(), mask(' ', ' "', ' "P'), python)) == ids(' ', ' "', ' "P')
    # only the prefix is allowed: kept rather than leaving nothing
    assert finite(allowed_after(forced, mask(' '), python)) == ids(' ')


@pytest.mark.skipif(kernels() is None, reason="no C++ kernels here")
def test_the_kernel_equals_the_pytorch_reference():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        logits = torch.randn(len(VOCAB), generator=g) * 4
        allowed = torch.rand(len(VOCAB), generator=g) < 0.5
        allowed[VOCAB.index('<eos>')] = False
        if not allowed.any():
            continue
        matcher = FakeMatcher(ff_bytes=[b"", b" ", b' "', b'"'][trial % 4])
        ref = allowed_after(matcher, allowed, True, logits.clone())
        got = allowed_after(matcher, allowed, False, logits.clone())
        assert torch.equal(torch.isinf(ref), torch.isinf(got)), trial
        assert torch.allclose(ref[torch.isfinite(ref)], got[torch.isfinite(got)], atol=1e-5), trial
