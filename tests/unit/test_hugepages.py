"""The huge-page arena (model/layers/hugepages.py): tensors carved from it behave as any other,
and weights moved into it give the same outputs."""
import pytest
import torch
from torch import nn

from tokenmill.model.layers.hugepages import HUGE, Arena, huge_zeros, move_packed_weights
from tokenmill.model.layers.q4 import Q4Linear
from tokenmill.model.layers.quantized import Int8Linear, _native


def test_arena_tensors_are_aligned_zeroed_and_separate():
    arena = Arena(3 * 1000 + 200)
    a = arena.take((10, 100), torch.int8)
    b = arena.take((7,), torch.float32)
    assert a.data_ptr() % HUGE == 0 and b.data_ptr() % 64 == 0
    assert a.eq(0).all() and b.eq(0).all()
    a.fill_(5)
    b.fill_(1.5)
    assert a.eq(5).all() and b.eq(1.5).all()  # no overlap
    with pytest.raises(ValueError):
        arena.take((4000,), torch.int8)


def test_huge_zeros():
    t = huge_zeros((2, 3, 5, 68), torch.int8)
    assert t.shape == (2, 3, 5, 68) and t.dtype == torch.int8 and t.eq(0).all()
    t[1, 2] = 7
    assert t.sum().item() == 7 * 5 * 68


@pytest.mark.usefixtures("portable_kernels")
def test_moved_weights_give_the_same_outputs():
    g = torch.Generator().manual_seed(0)
    int8 = Int8Linear(torch.randn(64, 96, generator=g), torch.randn(64, generator=g))
    q4 = Q4Linear(torch.randint(0, 16, (48, 64), generator=g, dtype=torch.uint8),
                  (torch.rand(48, 2, generator=g) * 0.02).half(),
                  (-torch.rand(48, 2, generator=g) * 0.1).half(), None, _native())
    model = nn.ModuleList([int8, q4])
    x96, x64 = torch.randn(3, 96, generator=g), torch.randn(3, 64, generator=g)
    before = (int8(x96), q4(x64))
    old = (int8._packed.data_ptr(), q4._packed.data_ptr())
    assert move_packed_weights(model) > 0
    assert (int8._packed.data_ptr(), q4._packed.data_ptr()) != old
    assert torch.equal(int8(x96), before[0]) and torch.equal(q4(x64), before[1])
