"""CPU memory in transparent huge pages (2 MiB) for what every step streams: the packed weights
and the KV cache.

On 4 KiB pages a decode step that reads ~95 MB of weights crosses ~23,000 pages: a TLB miss at
each, and the hardware prefetcher stops at every page edge. Most Linux machines run THP in
`madvise` mode, so PyTorch's allocations stay on 4 KiB pages unless asked. Here one anonymous
mapping per arena is advised MADV_HUGEPAGE and tensors are carved out of it (64-byte aligned);
where the kernel or Python cannot advise, the same code runs on ordinary pages.
"""
from __future__ import annotations

import math
import mmap
import threading

import torch
from torch import nn

HUGE = 2 << 20  # bytes in one huge page
_ALIGN = 64


class Arena:
    """One mapping, carved into tensors in order (they share it; it lives while any does)."""

    def __init__(self, nbytes: int):
        # private and anonymous (Python's default for -1 is shared memory, which THP skips):
        # zero-filled, not yet resident
        self.map = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            self.map.madvise(mmap.MADV_HUGEPAGE)
        except (AttributeError, OSError, ValueError):  # no THP here: ordinary pages
            pass
        self.base = torch.frombuffer(self.map, dtype=torch.uint8)
        self.offset = (-self.base.data_ptr()) % HUGE  # start on a huge-page boundary
        self.end = self.offset + nbytes

    def take(self, shape, dtype: torch.dtype) -> torch.Tensor:
        nbytes = _nbytes(shape, dtype)
        if self.offset + nbytes > self.end:
            raise ValueError("arena is full")
        t = self.base[self.offset:self.offset + nbytes].view(dtype).view(shape)
        self.offset += -(-nbytes // _ALIGN) * _ALIGN
        return t


def _nbytes(shape, dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


_MADV_POPULATE_WRITE = 23  # Linux 5.14+


def huge_zeros(shape, dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled CPU tensor in its own huge-page mapping, every page faulted in now."""
    t, faulted = huge_zeros_begin(shape, dtype)
    faulted()
    return t


def _populate(address: int, nbytes: int) -> bool:
    """Faults in [address, address + nbytes) writable, in the kernel and outside the GIL;
    False where the kernel cannot (before Linux 5.14, or not glibc)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc.madvise(address, nbytes, _MADV_POPULATE_WRITE) == 0
    except (OSError, AttributeError):
        return False


def huge_zeros_begin(shape, dtype: torch.dtype):
    """(the tensor, a call that returns once every page is faulted in): the pages are faulted
    in by a thread meanwhile, so that a loader can read weights at the same time. The mapping
    is fresh, so its pages read as zeros whether faulted in yet or not; populating them (one
    madvise, outside the GIL) is enough, where writing zeros over them costs 7x as long (0.16 s
    against 0.02 s for 256 MiB here). Where the kernel cannot populate (before Linux 5.14),
    zeros are written at once, by the caller."""
    arena = Arena(_nbytes(shape, dtype))
    t = arena.take(shape, dtype)
    start, nbytes = arena.base.data_ptr(), len(arena.map)
    if not _populate(start, min(HUGE, nbytes)):  # the first page: can this kernel do it?
        t.zero_()
        return t, lambda: None
    worker = threading.Thread(target=_populate, args=(start, nbytes), name="tokenmill-kv-pages", daemon=True)
    worker.start()
    return t, worker.join


def move_packed_weights(model: nn.Module) -> int:
    """Copies every CPU kernel-layout weight (`_packed` of the int8 and 4-bit linears) into one
    huge-page arena; returns the bytes moved."""
    owners = [m for m in model.modules()
              if isinstance(getattr(m, "_packed", None), torch.Tensor) and m._packed.device.type == "cpu"]
    if not owners:
        return 0
    total = sum(-(-m._packed.numel() * m._packed.element_size() // _ALIGN) * _ALIGN for m in owners)
    arena = Arena(total)
    for m in owners:
        t = arena.take(m._packed.shape, m._packed.dtype)
        t.copy_(m._packed)
        m._packed = t  # a registered buffer or a plain attribute: both take the new tensor
    return total
