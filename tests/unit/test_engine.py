"""Engine behaviour on a tiny random model: abort, stops, n samples, seeds, errors, streaming."""
import pytest

from tokenmill import SamplingParams
from tokenmill.engine.engine import PromptTooLongError
from tokenmill.model.loader.chat_template import ChatTemplate, ChatTemplateError


def test_abort_frees_blocks_at_once(tiny_llm):
    eng = tiny_llm.engine
    rid = eng.add_request(prompt="x" * 100, params=SamplingParams(max_tokens=50, ignore_eos=True))
    eng.step()
    assert eng.block_manager.usage > 0
    assert eng.abort_request(rid)
    assert eng.block_manager.usage == 0.0  # freed before the next step
    outs = eng.step()
    assert [(o.request_id, o.finished, o.outputs[0].finish_reason) for o in outs] == [(rid, True, "abort")]
    assert not eng.has_unfinished_requests()


def test_n_samples_share_prompt_blocks(tiny_llm):
    eng = tiny_llm.engine
    prompt = [256] + [65 + i % 26 for i in range(70)]  # 71 tokens: 4 full blocks of 16
    rid = eng.add_request(prompt_token_ids=prompt,
                          params=SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=5, ignore_eos=True))
    eng.step()  # all four admitted in one step; children 2-4 hit child 1's blocks
    tables = [c.block_table for c in eng.groups[rid].children]
    assert tables[0][:4] == tables[1][:4] == tables[2][:4] == tables[3][:4]
    assert all(eng.block_manager.blocks[b].ref_count == 4 for b in tables[0][:4])
    assert len({t[4] for t in tables}) == 4  # the partial last block is each child's own
    while eng.has_unfinished_requests():
        eng.step()
    assert eng.block_manager.usage == 0.0


def test_n_samples_differ_and_seeds_reproduce(tiny_llm):
    p = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=12, ignore_eos=True)
    a = tiny_llm.generate(["hello there"], p)[0]
    texts = [c.token_ids for c in a.outputs]
    assert len({tuple(t) for t in texts}) == 3
    # the same seeded request again, now in a batch with unrelated sampled requests
    others = SamplingParams(temperature=1.0, max_tokens=12)
    b = tiny_llm.generate(["zzz", "hello there", "a much longer prompt " * 3], [others, p, others])[1]
    assert [c.token_ids for c in b.outputs] == texts


def test_stop_string_and_stop_token(tiny_llm):
    greedy = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    full = tiny_llm.generate(["abc"], greedy)[0].outputs[0]
    stop = full.text[5:8]
    out = tiny_llm.generate(["abc"], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                   stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == full.text[:full.text.find(stop)]
    tok = full.token_ids[3]
    out = tiny_llm.generate(["abc"], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                   stop_token_ids=[tok]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == tok
    assert out.token_ids == full.token_ids[:full.token_ids.index(tok) + 1]
    assert full.finish_reason == "length" and len(full.token_ids) == 30


def test_prompt_too_long_is_a_clear_error(tiny_llm):
    with pytest.raises(PromptTooLongError, match="context is"):
        tiny_llm.generate([[65] * 600], SamplingParams())
    with pytest.raises(ValueError, match="out of range"):
        tiny_llm.generate([[65, 100000]], SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        tiny_llm.generate([[]], SamplingParams())
    assert not tiny_llm.engine.has_unfinished_requests()


def test_logprobs_come_with_tokens(tiny_llm):
    out = tiny_llm.generate(["hi"], SamplingParams(temperature=0, max_tokens=4, logprobs=2,
                                                   ignore_eos=True))[0].outputs[0]
    assert len(out.logprobs) == 4
    for tok, (lp, top) in zip(out.token_ids, out.logprobs):
        assert len(top) == 2 and tok == next(iter(top)) and lp == top[tok] and lp <= 0


def test_stream_yields_pieces_that_add_up(tiny_llm):
    p = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    pieces = list(tiny_llm.stream("stream me", p))
    assert len(pieces) > 1
    assert "".join(pieces) == tiny_llm.generate(["stream me"], p)[0].outputs[0].text


def test_stream_closed_early_frees_blocks(tiny_llm):
    gen = tiny_llm.stream("x" * 40, SamplingParams(max_tokens=200, ignore_eos=True))
    next(gen)
    gen.close()
    assert tiny_llm.engine.block_manager.usage == 0.0


def test_chat_uses_template(tiny_llm):
    ids = tiny_llm.tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    assert tiny_llm.tokenizer.decode(ids, skip_special_tokens=False) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_is_sandboxed():
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        ChatTemplate(evil).render([{"role": "user", "content": "x"}])
    evil2 = "{{ messages.append(1) }}"
    with pytest.raises(ChatTemplateError):
        ChatTemplate(evil2).render([{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="no"):
        ChatTemplate("{{ raise_exception('no') }}").render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(n=0),
                                 dict(max_tokens=0), dict(min_p=2), dict(logprobs=21),
                                 dict(presence_penalty=3), dict(min_tokens=5, max_tokens=2)])
def test_sampling_params_validation(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_stats(tiny_llm):
    tiny_llm.generate(["count me", "and me"], SamplingParams(max_tokens=3, ignore_eos=True))
    s = tiny_llm.engine.get_stats()
    assert s.num_running == 0 and s.num_waiting == 0 and s.kv_cache_usage == 0.0
    assert s.num_generation_tokens >= 6 and s.finished_by_reason.get("length", 0) >= 2


def test_chunked_prefill_off_needs_a_budget_that_fits_the_context(tiny_llama_dir):
    from tokenmill import LLM
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        LLM(tiny_llama_dir, kv_cache_memory_gib=0.01, show_progress=False,
            enable_chunked_prefill=False, max_num_batched_tokens=64)
    llm = LLM(tiny_llama_dir, kv_cache_memory_gib=0.01, show_progress=False, enable_chunked_prefill=False,
              max_num_batched_tokens=128, max_model_len=128)
    out = llm.generate([[65] * 120], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4  # a 120-token prompt runs, unsplit


def test_lowered_context_is_logged(tiny_llama_dir, caplog):
    from tokenmill import LLM
    with caplog.at_level("WARNING", logger="tokenmill"):
        llm = LLM(tiny_llama_dir, kv_cache_memory_gib=0.00003, show_progress=False)
    assert llm.engine.max_model_len < 512
    assert f"max_model_len lowered from 512 to {llm.engine.max_model_len}" in caplog.text


def test_n_equal_seed_streams_differ_from_the_next_seed(tiny_llm):
    p = dict(temperature=1.0, max_tokens=12, ignore_eos=True)
    two = tiny_llm.generate(["hello"], SamplingParams(n=2, seed=7, **p))[0]
    seed8 = tiny_llm.generate(["hello"], SamplingParams(seed=8, **p))[0]
    seed7 = tiny_llm.generate(["hello"], SamplingParams(seed=7, **p))[0]
    assert two.outputs[0].token_ids == seed7.outputs[0].token_ids
    assert two.outputs[1].token_ids != seed8.outputs[0].token_ids
