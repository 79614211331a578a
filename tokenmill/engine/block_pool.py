"""A pool of KV blocks: ref counts, an LRU free list, and the prefix cache's names for blocks.

A freed block keeps its contents and its hash on the free list until it is handed out again;
only then is it evicted from the cache. A model with sliding-window layers has two pools (see
block_manager.py): one for the global layers' caches and one for the windowed layers'.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict


class Block:
    __slots__ = ("block_id", "ref_count", "block_hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: bytes | None = None
        self.token_ids: tuple[int, ...] | None = None  # what the cached block holds


def chain_hash(parent: bytes | None, salt: str | None, tokens) -> bytes:
    """sha256 over (parent digest, salt of the first block, token ids as int64)."""
    h = hashlib.sha256(parent or b"root")
    if parent is None and salt:
        h.update(b"salt:" + salt.encode())
    h.update(array("q", tokens).tobytes())
    return h.digest()


class BlockPool:
    def __init__(self, num_blocks: int, reserved: int = 0):
        # ids below `reserved` are never handed out (a windowed pool's block 0: zeros, where a
        # table points for blocks that have left the window)
        self.num_blocks = num_blocks
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(reserved, num_blocks))
        self.cached: dict[bytes, int] = {}  # block hash -> block id

    def lookup(self, block_hash: bytes, tokens: tuple[int, ...]) -> int | None:
        """The cached block of that name, if it holds those tokens (a collision never hits)."""
        block_id = self.cached.get(block_hash)
        if block_id is None or self.blocks[block_id].token_ids != tokens:
            return None
        return block_id

    def register(self, block_hash: bytes, block_id: int, tokens: tuple[int, ...]) -> None:
        if block_hash not in self.cached:
            self.cached[block_hash] = block_id
            block = self.blocks[block_id]
            block.block_hash, block.token_ids = block_hash, tokens

    def hold(self, block_id: int) -> None:
        """One more holder of a (cached) block, taken back from the free list if it was there."""
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
        block.ref_count += 1

    def take(self) -> int:
        """A fresh block: the least recently freed, its old contents evicted from the cache."""
        block_id, _ = self.free_queue.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:
            if self.cached.get(block.block_hash) == block_id:
                del self.cached[block.block_hash]
            block.block_hash = None
            block.token_ids = None
        block.ref_count = 1
        return block_id

    def release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free_queue[block_id] = None

    def revived(self, block_ids) -> int:
        """How many of these blocks sit on the free list (holding them shrinks it)."""
        return sum(1 for b in block_ids if self.blocks[b].ref_count == 0)

    @property
    def num_free(self) -> int:
        return len(self.free_queue)
