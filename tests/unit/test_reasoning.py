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
