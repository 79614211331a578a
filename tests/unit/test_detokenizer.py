"""Incremental detokenizer on the bundled model's real byte-level BPE vocabulary."""
import pytest

from tokenmill.engine.detokenizer import IncrementalDetokenizer
from tokenmill.model.loader import load_checkpoint
from tokenmill.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def tok(smollm2_path):
    return load_checkpoint(smollm2_path).tokenizer()


def stream(tok, text, **params):
    ids = tok.encode(text, add_special_tokens=False)
    d = IncrementalDetokenizer(tok, tok.encode("Hi", add_special_tokens=False), SamplingParams(**params))
    pieces, stop = [], None
    for i in ids:
        stop = d.add_token(i)
        pieces.append(d.flush(False))
        if stop:
            break
    pieces.append(d.flush(True))
    return pieces, stop, ids


def test_emoji_and_cjk_never_broken(tok):
    text = "Crabs 🦀 and 日本語 text, plus é and 👩‍👩‍👧."
    pieces, _, ids = stream(tok, text)
    assert "".join(pieces) == text
    assert len(ids) > len(text.split())  # multi-token characters were really exercised
    assert all("\ufffd" not in p for p in pieces)
    for p in pieces:
        p.encode("utf-8")  # no lone surrogates


def test_stop_string_split_across_tokens(tok):
    text = "The answer is forty-two. STOP HERE and nothing more"
    ids = tok.encode(text, add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert "STOP HERE" not in pieces  # the stop string spans tokens
    out, stop, _ = stream(tok, text, stop=["STOP HERE"])
    assert stop == "STOP HERE"
    assert "".join(out) == "The answer is forty-two. "


def test_hold_back_never_leaks_stop_prefix(tok):
    out, stop, _ = stream(tok, "abc END", stop=["ENDX", "END"])
    assert stop == "END" and "".join(out) == "abc "
    for piece in out:
        assert "EN" not in piece


def test_earliest_stop_wins(tok):
    out, stop, _ = stream(tok, "one two three", stop=["three", "two"])
    assert stop == "two" and "".join(out) == "one "


def test_incomplete_utf8_at_the_end_is_flushed_when_finished(tok):
    ids = tok.encode("ok 🦀", add_special_tokens=False)
    d = IncrementalDetokenizer(tok, [], SamplingParams())
    out = []
    for i in ids[:-1]:  # the crab's last byte never comes
        d.add_token(i)
        out.append(d.flush(False))
    assert "\ufffd" not in "".join(out)
    out.append(d.flush(True))
    assert "".join(out).startswith("ok ") and "".join(out).endswith("\ufffd")
