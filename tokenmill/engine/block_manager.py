"""Paged KV cache bookkeeping: which physical blocks hold which request's tokens.

Blocks are ref-counted (block_pool.py). With prefix caching, every full block is named by a
hash chain (sha256 of the parent's digest, the request's cache salt and the block's token ids),
so a later request with the same prefix (and salt) reuses the block. A hit is also checked
against the block's stored tokens: a collision can never serve another prompt's KV.

A model with sliding-window layers (gemma3: five of every six) keeps those layers' K/V in a
second pool (`local`), with a second table per request (req.local_table, one entry per block of
the request's context, as req.block_table). A windowed layer's query at position p sees keys
p - window + 1 .. p, and positions only grow, so once a request's next token is at p the blocks
wholly before p - window + 1 are released: their entries point at the pool's block 0, which
stays zero and is never handed out. A long context then holds every block in the global layers
and about window / block_size in the windowed ones. Prefix hits need both: the global blocks of
the prefix and the windowed blocks its last window spans (names shared by the two pools).
"""
from __future__ import annotations

from .block_pool import BlockPool, chain_hash
from .request import Request

NULL_BLOCK = 0  # a windowed pool's block for what has left the window


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 local_blocks: int = 0, window: int = 0):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self.blocks = self.pool.blocks
        # the windowed layers' pool, where there are any besides global ones
        self.window = window if local_blocks else 0
        self.local = BlockPool(local_blocks, reserved=1) if local_blocks else None
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

    def _first_visible(self, position: int) -> int:
        """The first block a windowed layer's query at `position` (or later) reads."""
        return max(0, position - self.window + 1) // self.block_size

    def _local_hits(self, req: Request, n: int) -> list[int] | None:
        """The windowed pool's cached blocks for the last window of an n-block prefix, or None."""
        hits = []
        for i in range(self._first_visible(n * self.block_size), n):
            block_id = self.local.lookup(self._block_hash(req, i), self._tokens(req, i))
            if block_id is None:
                return None
            hits.append(block_id)
        return hits

    def get_computed_blocks(self, req: Request) -> list[int]:
        """Longest run of cached full blocks at the start of req's tokens. The last token is
        never served from cache: its logits are needed to sample the next one. Pure lookup:
        the scheduler counts the statistics once, when it admits the request."""
        if not self.enable_prefix_caching or req.params.prompt_logprobs is not None \
                or req.params.pooling in ("mean", "cls"):
            return []  # prompt logprobs and mean / first-token pooling need every prompt position computed
        hits = []
        for i in range((req.num_tokens - 1) // self.block_size):
            block_id = self.pool.lookup(self._block_hash(req, i), self._tokens(req, i))
            if block_id is None:
                break
            hits.append(block_id)
        if self.local is not None:  # as long as the windowed layers have the prefix's window too
            while hits and self._local_hits(req, len(hits)) is None:
                hits.pop()
        return hits

    def count_prefix_lookup(self, req: Request, hits: list[int]) -> None:
        if self.enable_prefix_caching:
            self.prefix_queries += req.num_tokens
            self.prefix_hits += len(hits) * self.block_size

    def _register(self, pool: BlockPool, table: list[int], req: Request, first: int, num_tokens: int) -> None:
        for i in range(first, num_tokens // self.block_size):
            if table[i] != NULL_BLOCK or pool is self.pool:
                pool.register(self._block_hash(req, i), table[i], self._tokens(req, i))

    # ---- allocation --------------------------------------------------------------------
    def _num_needed(self, req: Request, num_new_tokens: int, computed: list[int]) -> int:
        total = req.num_computed_tokens + len(computed) * self.block_size + num_new_tokens
        return max(0, -(-total // self.block_size) - len(req.block_table) - len(computed))

    def _local_plan(self, req: Request, num_new_tokens: int, computed) -> tuple[int, list[int], int]:
        """(first block the step reads, the windowed pool's prefix hits, blocks it must take)"""
        # after it, entries [lo, total) are blocks, those before lo the null block; the table
        # (or, for a new request, its hits) already has blocks for [lo, its end)
        start = req.num_computed_tokens + len(computed) * self.block_size
        lo = self._first_visible(start)
        hits = self._local_hits(req, len(computed)) if computed else []
        held = len(hits) + sum(1 for b in req.local_table[lo:] if b != NULL_BLOCK)
        total = -(-(start + num_new_tokens) // self.block_size)
        return lo, hits, max(0, total - lo - held)

    def can_allocate(self, req: Request, num_new_tokens: int, computed: list[int] = ()) -> bool:
        # cached hits with ref_count 0 sit in the free queue; taking them shrinks it
        if self._num_needed(req, num_new_tokens, computed) > self.pool.num_free - self.pool.revived(computed):
            return False
        if self.local is None:
            return True
        lo, hits, need = self._local_plan(req, num_new_tokens, computed)
        leaving = sum(1 for b in req.local_table[:lo] if b != NULL_BLOCK and self.local.blocks[b].ref_count == 1)
        return need <= self.local.num_free + leaving - self.local.revived(hits)

    def allocate(self, req: Request, num_new_tokens: int, computed: list[int] = ()) -> None:
        """Give req the blocks for num_new_tokens more tokens (after `computed` prefix hits,
        which the caller then counts as computed). Caller checks can_allocate first."""
        num_needed = self._num_needed(req, num_new_tokens, computed)
        if self.local is not None:
            self._allocate_local(req, num_new_tokens, computed)
        for block_id in computed:
            self.pool.hold(block_id)
            req.block_table.append(block_id)
        for _ in range(num_needed):
            req.block_table.append(self.pool.take())
        if self.enable_prefix_caching:
            done = min(req.num_computed_tokens + len(computed) * self.block_size + num_new_tokens, req.num_tokens)
            self._register(self.pool, req.block_table, req, req.num_hashed_blocks, done)
            if self.local is not None:
                self._register(self.local, req.local_table, req, req.num_hashed_blocks, done)
            req.num_hashed_blocks = max(req.num_hashed_blocks, done // self.block_size)

    def _allocate_local(self, req: Request, num_new_tokens: int, computed) -> None:
        lo, hits, _ = self._local_plan(req, num_new_tokens, computed)
        table = req.local_table
        if computed:  # a new request: nothing before the prefix's window, then its hits
            table[:] = [NULL_BLOCK] * (len(computed) - len(hits))
            for block_id in hits:
                self.local.hold(block_id)
                table.append(block_id)
        for i in range(min(lo, len(table))):  # left the window for good
            if table[i] != NULL_BLOCK:
                self.local.release(table[i])
                table[i] = NULL_BLOCK
        start = req.num_computed_tokens + len(computed) * self.block_size
        total = -(-(start + num_new_tokens) // self.block_size)
        while len(table) < total:
            table.append(NULL_BLOCK if len(table) < lo else self.local.take())

    def free(self, req: Request) -> None:
        # Tail blocks first, so that they are evicted before the (more shared) head blocks.
        for block_id in reversed(req.block_table):
            self.pool.release(block_id)
        for block_id in reversed(req.local_table):
            if block_id != NULL_BLOCK:
                self.local.release(block_id)
        req.block_table = []
        req.local_table = []
        req.num_hashed_blocks = 0

    def held(self, req: Request) -> tuple[int, int]:
        """(global blocks, windowed blocks) req holds."""
        return len(req.block_table), sum(1 for b in req.local_table if b != NULL_BLOCK)

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def usage(self) -> float:
        return 1.0 - self.pool.num_free / self.num_blocks
