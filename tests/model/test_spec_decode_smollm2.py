"""Prompt lookup on the real model: on an edit of a text given in the prompt, drafts are made
and accepted, and the greedy answer is token for token the one without speculation."""
import pytest

from tokenmill import LLM, SamplingParams

TASK = [{"role": "user", "content": (
    "Rename the variable `x` to `count` in this code and return the whole code:\n\n```python\n"
    "def count_words(text):\n    x = 0\n    for word in text.split():\n        if word:\n"
    "            x += 1\n    return x\n```")}]


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return LLM(smollm2_path, show_progress=False, kv_cache_memory_gib=0.1)


def test_grounded_answer_identical_with_drafts_accepted(llm):
    p = SamplingParams(temperature=0, max_tokens=80)
    s = llm.engine.stats
    before = (s.spec_num_draft_tokens, s.spec_num_accepted_tokens, s.num_steps)
    on = llm.chat([TASK], p)[0].outputs[0]
    drafted, accepted, steps = (x - y for x, y in zip(
        (s.spec_num_draft_tokens, s.spec_num_accepted_tokens, s.num_steps), before))
    off = llm.chat([TASK], SamplingParams(temperature=0, max_tokens=80, speculative=False))[0].outputs[0]
    assert on.token_ids == off.token_ids and "count" in on.text
    # SmolLM2-135M rewrites more than it copies: about a third of its drafts hold here
    assert drafted > 0 and accepted >= 5, (drafted, accepted)
    assert steps <= len(on.token_ids) - accepted + 1  # each accepted draft token saved a forward pass
