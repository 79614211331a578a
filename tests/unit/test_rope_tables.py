"""Rotary tables are built for the positions in use and grow as a context does, up to the
engine's context, with the same rows as tables built whole."""
import torch

from tokenmill.model.layers.rope import RotaryEmbedding


def test_tables_grow_to_cover_positions_and_stop_at_the_context():
    whole = RotaryEmbedding(64, 20000, 500000.0)
    whole.cos, whole.sin = whole._tables(20000, torch.device("cpu"))
    rope = RotaryEmbedding(64, 20000, 500000.0)
    rope.trim(12000)
    first = rope.cos.shape[0]
    assert first < 12000  # not built for the whole context at load
    rope.cover(first + 1)
    assert rope.cos.shape[0] == min(2 * first, 12000)
    rope.cover(11999)
    assert rope.cos.shape[0] == 12000  # never past the engine's context
    assert torch.equal(rope.cos, whole.cos[:12000]) and torch.equal(rope.sin, whole.sin[:12000])
    rope.cover(5)  # covered already: nothing rebuilt
    assert rope.cos.shape[0] == 12000


def test_a_short_context_cuts_the_first_tables():
    rope = RotaryEmbedding(32, 131072, 10000.0)
    rope.trim(100)
    assert rope.cos.shape == (100, 32) and rope.sin.shape == (100, 32)
    rope.cover(100)
    assert rope.cos.shape[0] == 100
