"""Grammar-constrained decoding in the engine, on a tiny random model: every sample (each of n
with its own matcher) matches the grammar, under batching and preemption; unconstrained rows in
the same batch are untouched; bad grammars are refused with a message."""
import re

import pytest
import torch

from tokenmill import LLM, SamplingParams
from tokenmill.engine.structured import GrammarError, GrammarSpec, allowed_tokens


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    # a KV cache of a few blocks: running many requests at once forces preemption
    return LLM(tiny_llama_dir, kv_cache_memory_gib=0.00002, show_progress=False)


def grammar(llm, spec):
    return [llm.engine.structured.compile(spec)]


def test_samples_match_the_grammar_under_preemption(llm):
    spec = GrammarSpec("regex", "(ab|ba){8,12}c")  # long enough to need preemption, with forced drafts too
    params = [SamplingParams(n=3, temperature=1.0, seed=s, max_tokens=40, logits_processors=grammar(llm, spec))
              for s in range(6)]
    outs = llm.generate(["hello"] * 6, params)
    texts = [c.text for o in outs for c in o.outputs]
    assert all(re.fullmatch("(ab|ba){8,12}c", t) for t in texts), texts
    assert len(set(texts)) > 3
    assert llm.engine.scheduler.num_preemptions > 0


def test_free_rows_next_to_constrained_ones_are_unchanged(llm):
    free = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    alone = llm.generate(["the sky"], free)[0].outputs[0].token_ids
    spec = GrammarSpec.json_schema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    mixed = llm.generate(["the sky", "x", "y"], [free] + [SamplingParams(
        temperature=1.0, seed=i, max_tokens=30, logits_processors=grammar(llm, spec)) for i in range(2)])
    assert mixed[0].outputs[0].token_ids == alone


def test_bitmask_unpacking_matches_llguidance():
    import llguidance.torch as lt
    words = torch.tensor([0x5, -1, 0x80000000 - 2**32, 0], dtype=torch.int32)
    got = allowed_tokens(words, 120)
    logits = torch.zeros(1, 120)
    lt.apply_token_bitmask_inplace(logits, words.unsqueeze(0))
    assert torch.equal(got, torch.isfinite(logits[0]))


@pytest.mark.parametrize("spec,needle", [
    (GrammarSpec("regex", "a(b"), "regex"),
    (GrammarSpec("grammar", "start: undefined_rule"), "grammar"),
    (GrammarSpec("json", '{"type": "array", "uniqueItems": true}'), "uniqueItems"),
])
def test_bad_grammars_say_why(llm, spec, needle):
    with pytest.raises(GrammarError, match=needle):
        llm.engine.structured.compile(spec)


def test_grammar_refuses_ignore_eos_and_min_tokens(llm):
    procs = grammar(llm, GrammarSpec("regex", "a+"))
    for kw in ({"ignore_eos": True}, {"min_tokens": 2}):
        with pytest.raises(ValueError, match="structured output"):
            SamplingParams(logits_processors=procs, **kw)


def test_compiled_grammars_are_cached(llm):
    compiler = llm.engine.structured
    spec = GrammarSpec.json_schema({"type": "object", "properties": {"cache_probe": {"type": "string"}}})
    before = compiler.compiled
    a, b = compiler.compile(spec), compiler.compile(spec)
    assert compiler.compiled == before + 1 and a.matcher is not b.matcher


def test_auto_tool_grammar_holds_a_call_to_its_schema(llm):
    """Under tool_choice auto the answer is free, but once it starts a call ('<' pushed here with
    a logit bias) the grammar holds it to a known tool and valid arguments."""
    from tokenmill.server import tools
    schemas = {"pick": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}},
                        "required": ["n"], "additionalProperties": False}}
    spec = tools.grammar_for(schemas, "auto", None, parallel=False)
    finished = 0
    for seed in range(5):
        p = SamplingParams(temperature=1.0, seed=seed, max_tokens=120, logit_bias={ord("<"): 100.0},
                           logits_processors=grammar(llm, spec))
        c = llm.generate(["call"], p)[0].outputs[0]
        assert c.text.startswith("<tool_call>")
        if c.finish_reason == "stop":
            finished += 1
            calls = tools.parse_calls(c.text, schemas, "auto")
            assert calls and calls[0]["function"]["name"] == "pick", c.text
    assert finished >= 3
    free = llm.generate(["call"], SamplingParams(temperature=1.0, seed=1, max_tokens=20, logit_bias={ord("<"): -100.0},
                                                 logits_processors=grammar(llm, spec)))[0].outputs[0]
    assert not free.text.startswith("<")  # plain text stays free


def test_forced_text_is_drafted_and_output_unchanged(tiny_llama_dir):
    """A grammar's forced tokens (JSON keys and separators) ride as speculative drafts, at any
    batch size: fewer steps, and seeded output identical to decoding one token a step."""
    spec = GrammarSpec.json_schema({"type": "object", "properties": {
        "alpha_key": {"type": "integer"}, "beta_key": {"enum": ["xx", "yy"]}, "gamma_key": {"type": "boolean"}},
        "required": ["alpha_key", "beta_key", "gamma_key"], "additionalProperties": False})
    outs, steps = {}, {}
    for mode in ("ngram", "off"):
        llm = LLM(tiny_llama_dir, speculation=mode, spec_max_batch=1, kv_cache_memory_gib=0.01, show_progress=False)
        params = [SamplingParams(temperature=1.0, seed=s, max_tokens=80, logits_processors=grammar(llm, spec))
                  for s in range(6)]
        outs[mode] = [o.outputs[0].text for o in llm.generate(["a", "b", "c", "d", "e", "f"], params)]
        steps[mode] = llm.engine.stats.num_steps
        if mode == "ngram":  # six requests, spec_max_batch 1: no n-gram drafts, only forced ones
            assert llm.engine.stats.spec_num_accepted_tokens >= 6 * len('"alpha_key": ')
    assert outs["ngram"] == outs["off"]
    assert steps["ngram"] < steps["off"]
    assert all('"beta_key": ' in t for t in outs["off"]), outs["off"]
