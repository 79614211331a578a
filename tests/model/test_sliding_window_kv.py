"""Sliding-window layers keep only their window of the KV cache (engine/block_manager.py): at 8k
context a windowed model holds the global layers' blocks plus a window's in the others, and
answers stay those of transformers while the windowed pool's blocks are released and reused,
batched, after prefix-cache hits and with speculative drafts accepted."""
import pytest
import torch

from tests.model.test_families import PROMPTS, family_model, hf_greedy
from tiny_models import save_hf_dir
from tokenmill import LLM, SamplingParams


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """(the transformers model, its directory): gemma3's five windowed layers to one global, window 8"""
    model = family_model("gemma3_text", seed=7)
    return model, save_hf_dir(model, str(tmp_path_factory.mktemp("gemma3") / "hf"))


def test_kv_blocks_at_8k_are_the_global_layers_and_the_windows(tmp_path):
    model = family_model("gemma3_text", seed=3)
    model.config.sliding_window, model.config.max_position_embeddings = 64, 8448
    path = save_hf_dir(model, str(tmp_path / "hf"))
    bs = 16
    llm = LLM(model=path, quantization="none", kv_cache_memory_gib=0.01, block_size=bs, max_num_seqs=2,
              max_model_len=8448, enable_prefix_caching=False)
    runner, bm, eng = llm.engine.runner, llm.engine.block_manager, llm.engine
    n_local = sum(runner.windowed_layers)
    n_global = len(runner.windowed_layers) - n_local
    assert (n_local, n_global, runner.window) == (5, 1, 64)
    # the windowed layers' pool is sized by windows, not by the context
    assert runner.local_blocks < 8192 // bs // 4
    prompt = [int(t) for t in torch.randint(3, model.config.vocab_size, (8000,), generator=torch.Generator().manual_seed(0))]
    eng.add_request(prompt_token_ids=prompt, params=SamplingParams(max_tokens=200, ignore_eos=True, temperature=0))
    req = next(iter(eng.scheduler.waiting))
    most_local = 0
    while eng.has_unfinished_requests():
        eng.step()
        if req.block_table:
            most_local = max(most_local, bm.held(req)[1])
            held_global, held_local = bm.held(req)
            ctx = req.num_computed_tokens + 1
    # in layer-blocks: every block of the context in the global layer, a window's in the others
    needed = -(-ctx // bs) * n_global + -(-64 // bs) * n_local
    held = held_global * n_global + held_local * n_local
    assert ctx > 8100 and held <= 1.10 * needed, (ctx, held, needed)
    assert held < 0.2 * -(-ctx // bs) * (n_local + n_global)  # against keeping every block
    # a prompt chunk of 512 holds its window and its own blocks, a decode step one block more
    assert most_local <= -(-64 // bs) + 1 + 512 // bs


def test_answers_equal_transformers_while_window_blocks_are_reused(gemma):
    model, path = gemma
    want = [hf_greedy(model, p, 48) for p in PROMPTS]
    # 2 sequences, 16-token steps: a windowed pool of 2 x 3 + 4 + 1 = 11 blocks of 4, where each
    # answer spans 16: its blocks are released as they leave the window and taken again
    llm = LLM(model=path, quantization="none", kv_cache_memory_gib=0.01, block_size=4, max_num_seqs=2,
              max_num_batched_tokens=16)
    assert llm.engine.runner.local_blocks == 11
    params = SamplingParams(max_tokens=48, min_tokens=48, temperature=0)
    s = llm.engine.stats
    before = (s.spec_num_draft_tokens, s.spec_num_accepted_tokens)
    first = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    # the prompts' global blocks are still cached, their windowed blocks long taken again: a hit
    # would need both, so none is served (tests/model/test_families.py has hits with windows)
    hits = llm.engine.get_stats().prefix_cache_hits
    again = [o.outputs[0].token_ids for o in llm.generate(PROMPTS[::-1], params)][::-1]
    assert llm.engine.get_stats().prefix_cache_hits == hits
    drafted, accepted = (x - y for x, y in zip((s.spec_num_draft_tokens, s.spec_num_accepted_tokens), before))
    assert first == want and again == want
    assert drafted > 0 and accepted > 0, (drafted, accepted)  # prompt-lookup drafts, exact with windows
