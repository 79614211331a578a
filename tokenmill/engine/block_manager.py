"""Paged KV cache bookkeeping: which physical blocks hold which request's tokens.

Blocks are ref-counted. With prefix caching, every full block is named by a hash chain
(sha256 of the parent's digest, the request's cache salt and the block's token ids), so a
later request with the same prefix (and salt) reuses the block. A hit is also checked against
the block's stored tokens: a collision can never serve another prompt's KV.
A freed block keeps its contents and its hash on an LRU free list until it is handed out
again; only then is it evicted from the cache.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from .request import Request


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


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}  # block hash -> block id
        self.prefix_queries = 0           # prompt tokens looked up in the cache
        self.prefix_hits = 0              # of which found

    # ---- prefix cache ----------------------------------------------------------------
    def _tokens(self, req: Request, i: int) -> tuple[int, ...]:
        return tuple(req.all_token_ids[i * self.block_size:(i + 1) * self.block_size])

    def _block_hash(self, req: Request, i: int) -> bytes:
        while len(req.block_hashes) <= i:
            j = len(req.block_hashes)
            parent = req.block_hashes[j - 1] if j else None
            req.block_hashes.append(chain_hash(parent, req.cache_salt, self._tokens(req, j)))
        return req.block_hashes[i]

    def get_computed_blocks(self, req: Request) -> list[int]:
        """Longest run of cached full blocks at the start of req's tokens. The last token is
        never served from cache: its logits are needed to sample the next one. Pure lookup:
        the scheduler counts the statistics once, when it admits the request."""
        if not self.enable_prefix_caching or req.params.prompt_logprobs is not None \
                or req.params.pooling in ("mean", "cls"):
            return []  # prompt logprobs and mean / first-token pooling need every prompt position computed
        hits = []
        for i in range((req.num_tokens - 1) // self.block_size):
            block_id = self.cached.get(self._block_hash(req, i))
            # the hash chain names the block; its stored tokens must match too
            if block_id is None or self.blocks[block_id].token_ids != self._tokens(req, i):
                break
            hits.append(block_id)
        return hits

    def count_prefix_lookup(self, req: Request, hits: list[int]) -> None:
        if self.enable_prefix_caching:
            self.prefix_queries += req.num_tokens
            self.prefix_hits += len(hits) * self.block_size

    def _register_full_blocks(self, req: Request, num_tokens: int) -> None:
        num_full = num_tokens // self.block_size
        for i in range(req.num_hashed_blocks, num_full):
            h = self._block_hash(req, i)
            block = self.blocks[req.block_table[i]]
            if h not in self.cached:
                self.cached[h] = block.block_id
                block.block_hash = h
                block.token_ids = self._tokens(req, i)
        req.num_hashed_blocks = max(req.num_hashed_blocks, num_full)

    # ---- allocation --------------------------------------------------------------------
    def _num_needed(self, req: Request, num_new_tokens: int, computed: list[int]) -> int:
        total = req.num_computed_tokens + len(computed) * self.block_size + num_new_tokens
        return max(0, -(-total // self.block_size) - len(req.block_table) - len(computed))

    def can_allocate(self, req: Request, num_new_tokens: int, computed: list[int] = ()) -> bool:
        # cached hits with ref_count 0 sit in the free queue; taking them shrinks it
        revived = sum(1 for b in computed if self.blocks[b].ref_count == 0)
        return self._num_needed(req, num_new_tokens, computed) <= len(self.free_queue) - revived

    def allocate(self, req: Request, num_new_tokens: int, computed: list[int] = ()) -> None:
        """Give req the blocks for num_new_tokens more tokens (after `computed` prefix hits,
        which the caller then counts as computed). Caller checks can_allocate first."""
        num_needed = self._num_needed(req, num_new_tokens, computed)
        for block_id in computed:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_queue[block_id]
            block.ref_count += 1
            req.block_table.append(block_id)
        for _ in range(num_needed):
            block_id, _ = self.free_queue.popitem(last=False)  # least recently freed
            block = self.blocks[block_id]
            if block.block_hash is not None:  # evict its old contents from the cache
                if self.cached.get(block.block_hash) == block_id:
                    del self.cached[block.block_hash]
                block.block_hash = None
                block.token_ids = None
            block.ref_count = 1
            req.block_table.append(block_id)
        if self.enable_prefix_caching:
            done = req.num_computed_tokens + len(computed) * self.block_size + num_new_tokens
            self._register_full_blocks(req, min(done, req.num_tokens))

    def free(self, req: Request) -> None:
        # Tail blocks first, so that they are evicted before the (more shared) head blocks.
        for block_id in reversed(req.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_queue[block_id] = None
        req.block_table = []
        req.num_hashed_blocks = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free_queue) / self.num_blocks
