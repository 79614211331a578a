"""Block manager: exact block ids, ref counts, prefix hits and eviction order."""
from tokenmill.engine.block_manager import NULL_BLOCK, BlockManager
from tokenmill.engine.request import Request
from tokenmill.sampling_params import SamplingParams


def req(tokens, rid="r"):
    return Request(rid, tokens, SamplingParams(), eos_ids=[0])


def admit(bm, r):
    """What the scheduler does on admission: prefix hits, then blocks for the rest."""
    hits = bm.get_computed_blocks(r)
    bm.count_prefix_lookup(r, hits)
    n = r.num_tokens - len(hits) * bm.block_size
    assert bm.can_allocate(r, n, hits)
    bm.allocate(r, n, hits)
    r.num_computed_tokens = r.num_tokens
    return hits


def test_allocation_takes_lowest_free_ids_in_order():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = req(list(range(10)))  # 10 tokens -> 3 blocks
    admit(bm, a)
    assert a.block_table == [0, 1, 2]
    assert [bm.blocks[i].ref_count for i in range(4)] == [1, 1, 1, 0]
    assert bm.num_free_blocks == 5
    # two full blocks are hashed and cached; the partial third is not
    assert bm.blocks[0].block_hash is not None and bm.blocks[1].block_hash is not None
    assert bm.blocks[2].block_hash is None


def test_prefix_hit_shares_blocks_and_counts_refs():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = req(list(range(10)), "a")
    admit(bm, a)
    b = req(list(range(8)) + [99, 98, 97], "b")  # same first two blocks
    hits = admit(bm, b)
    assert hits == [0, 1]
    assert b.block_table == [0, 1, 3]
    assert bm.blocks[0].ref_count == 2 and bm.blocks[1].ref_count == 2
    assert bm.prefix_hits == 8 and bm.prefix_queries == 21


def test_last_token_is_never_a_hit():
    bm = BlockManager(num_blocks=8, block_size=4)
    admit(bm, req(list(range(8)), "a"))
    b = req(list(range(8)), "b")  # identical 2-block prompt: only 1 block may hit
    assert admit(bm, b) == [0]
    assert b.block_table == [0, 2]


def test_free_keeps_cache_and_evicts_least_recent_tail_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = req([1, 2, 3, 4, 5], "a")  # blocks 0,1 full (cached), 2 partial
    admit(bm, a)
    bm.free(a)
    assert [bm.blocks[i].ref_count for i in range(4)] == [0, 0, 0, 0]
    # free order: untouched block 3 first, then a's blocks tail first
    assert list(bm.pool.free_queue) == [3, 2, 1, 0]
    # the cached blocks still give hits after free
    b = req([1, 2, 3, 4, 9], "b")
    assert admit(bm, b) == [0, 1]
    assert b.block_table == [0, 1, 3]  # new block from the front of the free queue
    assert list(bm.pool.free_queue) == [2]
    bm.free(b)
    assert list(bm.pool.free_queue) == [2, 3, 1, 0]
    # a 4-block request evicts everything, in free-queue order
    c = req([7] * 8, "c")
    assert admit(bm, c) == []
    assert c.block_table == [2, 3, 1, 0]
    assert sorted(bm.pool.cached.values()) == [0, 1, 2, 3]  # only c's four full blocks
    # the old prefix [1,2,3,4] is gone
    d = req([1, 2, 3, 4, 5], "d")
    assert bm.get_computed_blocks(d) == []


def test_evicted_block_is_removed_from_cache():
    bm = BlockManager(num_blocks=2, block_size=2)
    a = req([1, 2, 3], "a")
    admit(bm, a)
    h0 = bm.blocks[0].block_hash
    bm.free(a)
    b = req([5, 6, 7, 8], "b")  # needs both blocks: block 1 then block 0 get reused
    admit(bm, b)
    assert b.block_table == [1, 0]
    assert h0 not in bm.pool.cached
    assert bm.blocks[0].block_hash == b.block_hashes[1]


def test_can_allocate_counts_revived_cached_blocks():
    bm = BlockManager(num_blocks=3, block_size=2)
    a = req([1, 2, 3, 4, 5], "a")  # all 3 blocks
    admit(bm, a)
    bm.free(a)  # all free, blocks 0 and 1 cached
    b = req([1, 2, 3, 4, 6, 7, 8], "b")  # hits 2 blocks, needs 2 more: only 1 left
    hits = bm.get_computed_blocks(b)
    assert hits == [0, 1]
    assert not bm.can_allocate(b, 3, hits)
    assert bm.can_allocate(b, 2, hits)


def test_prefix_caching_off_never_hits():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    admit(bm, req(list(range(10)), "a"))
    b = req(list(range(10)), "b")
    assert admit(bm, b) == []
    assert b.block_table == [3, 4, 5]
    assert bm.pool.cached == {}


def test_usage():
    bm = BlockManager(num_blocks=4, block_size=4)
    a = req(list(range(5)))
    admit(bm, a)
    assert bm.usage == 0.5
    bm.free(a)
    assert bm.usage == 0.0


def test_hash_collision_is_not_a_hit(monkeypatch):
    """Blocks are named by a hash, but a hit must also hold the same tokens: two different
    prompts forced onto one hash never share KV."""
    import tokenmill.engine.block_manager as bmod
    monkeypatch.setattr(bmod, "chain_hash", lambda parent, salt, tokens: b"same")
    bm = BlockManager(num_blocks=8, block_size=4)
    admit(bm, req([1, 2, 3, 4, 5], "a"))
    b = req([9, 9, 9, 9, 5], "b")
    assert admit(bm, b) == []  # same hash, other tokens: computed afresh
    assert 0 not in b.block_table


def test_cache_salt_separates_tenants():
    bm = BlockManager(num_blocks=16, block_size=4)
    prompt = list(range(9))
    a = Request("a", prompt, SamplingParams(), eos_ids=[0], cache_salt="tenant-1")
    admit(bm, a)
    other = Request("b", prompt, SamplingParams(), eos_ids=[0], cache_salt="tenant-2")
    assert admit(bm, other) == []
    same = Request("c", prompt, SamplingParams(), eos_ids=[0], cache_salt="tenant-1")
    assert admit(bm, same) == a.block_table[:2]
    unsalted = Request("d", prompt, SamplingParams(), eos_ids=[0])
    assert admit(bm, unsalted) == []


def test_block_hash_is_sha256_chain():
    """Not Python's hash(): the key of a block is a sha256 digest over the chain."""
    bm = BlockManager(num_blocks=8, block_size=4)
    a = req(list(range(9)))
    admit(bm, a)
    h0 = bm.blocks[a.block_table[0]].block_hash
    assert isinstance(h0, bytes) and len(h0) == 32


def test_window_blocks_leave_the_windowed_pool_and_hits_need_the_window():
    # window 6, blocks of 4: a query at p reads blocks from (p - 5) // 4 on
    bm = BlockManager(num_blocks=16, block_size=4, local_blocks=8, window=6)
    a = req(list(range(1, 19)), "a")  # 18 tokens: blocks 0..4
    admit(bm, a)
    assert a.block_table == [0, 1, 2, 3, 4]
    assert a.local_table == [1, 2, 3, 4, 5]  # the prompt's step reads all of them; block 0 is never handed out
    bm.allocate(a, 1)  # the next token at 18 reads from block 3 on
    assert a.local_table == [0, 0, 0, 4, 5] and bm.held(a) == (5, 2)
    assert bm.local.num_free == 5 and bm.local.blocks[1].ref_count == 0
    # the same first 16 tokens: a hit of 4 blocks needs the windowed blocks of positions 11..15
    # (blocks 2, 3); block 2 left a's window, but a released block keeps its name until taken
    b = req(list(range(1, 17)) + [99, 98], "b")
    assert bm.get_computed_blocks(b) == [0, 1, 2, 3]
    c = req(list(range(100, 120)), "c")  # takes the 5 free windowed blocks: a's old ones go
    admit(bm, c)
    assert bm.local.num_free == 0
    assert bm.get_computed_blocks(b) == []  # every shorter prefix's window is gone too
    bm.free(c)
    bm.free(a)
    assert bm.local.num_free == 7 and bm.num_free_blocks == 16
    admit(bm, b)  # b computes its prompt again, and holds its blocks from 1 on
    assert NULL_BLOCK not in b.local_table and bm.held(b) == (5, 5)


def test_a_windowed_pool_that_runs_out_refuses_like_the_global_one():
    bm = BlockManager(num_blocks=32, block_size=4, local_blocks=4, window=4)
    a = req(list(range(1, 30)), "a")
    assert not bm.can_allocate(a, 29)  # the whole prompt in one step needs 8 windowed blocks
    assert bm.can_allocate(a, 8)       # two blocks of it at a time do
    bm.allocate(a, 8)
    a.num_computed_tokens = 8
    assert bm.can_allocate(a, 8)       # the first block leaves the window: there is room again
    bm.allocate(a, 8)
    assert bm.held(a) == (4, 3)
