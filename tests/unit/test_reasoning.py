"""The reasoning splitter: the same split whatever the deltas, tags cut anywhere."""
import pytest

from tokenmill.server.reasoning import ReasoningSplitter

CASES = [
    # (answer text, prompt opened the block, reasoning, content)
    ("I think</think>Yes!", True, "I think", "Yes!"),
    ("\nI think\n</think>\n\nYes!", True, "I think\n", "Yes!"),
    ("<think>\nhmm, 2+2</think>\n\n4", False, "hmm, 2+2", "4"),
    ("Plain answer that mentions <think> tags", False, "", "Plain answer that mentions <think> tags"),
    ("still thinking when cut", True, "still thinking when cut", ""),
    ("<think>cut inside the tag </thi", False, "cut inside the tag </thi", ""),
    ("<thin", False, "", "<thin"),
    ("", True, "", ""),
    ("a < b </think> and 1 </ 2", True, "a < b ", "and 1 </ 2"),
]


@pytest.mark.parametrize("text,in_thought,reasoning,content", CASES)
def test_whole_and_every_two_way_cut_agree(text, in_thought, reasoning, content):
    assert ReasoningSplitter.split(text, in_thought) == (reasoning, content)
    for cut in range(len(text) + 1):
        s = ReasoningSplitter(in_thought)
        r1, c1 = s.feed(text[:cut])
        r2, c2 = s.feed(text[cut:], final=True)
        assert (r1 + r2, c1 + c2) == (reasoning, content) == (s.reasoning, s.content), cut


@pytest.mark.parametrize("text,in_thought,reasoning,content", CASES)
def test_one_character_at_a_time(text, in_thought, reasoning, content):
    s = ReasoningSplitter(in_thought)
    for ch in text:
        s.feed(ch)
    s.feed("", final=True)
    assert (s.reasoning, s.content) == (reasoning, content)


def test_nothing_is_held_longer_than_a_possible_tag():
    s = ReasoningSplitter(True)
    assert s.feed("abc </") == ("abc ", "")   # "</" may start </think>
    assert s.feed("b>") == ("</b>", "")        # it did not


def test_thinking_budget_closes_the_block(thinking_model):
    """The scripted model thinks `I think` (7 tokens); a budget of 3 closes the block after `I t`."""
    from thinking_model import CLOSE_ID, OPEN_ID
    from tokenmill import LLM, SamplingParams
    from tokenmill.engine.thinking_budget import ThinkingBudget
    llm = LLM(thinking_model, kv_cache_memory_gib=0.01, show_progress=False)
    ask = [{"role": "user", "content": "Is it?"}]
    free = llm.chat(ask, SamplingParams(temperature=0, max_tokens=20))[0].outputs[0].text
    assert free == "I think</think>Yes!"
    for budget, text in ((3, "I t</think>Yes!"), (7, "I think</think>Yes!"), (50, "I think</think>Yes!")):
        p = SamplingParams(temperature=0, max_tokens=20, logits_processors=[ThinkingBudget(budget, OPEN_ID, CLOSE_ID, True)])
        assert llm.chat(ask, p)[0].outputs[0].text == text
