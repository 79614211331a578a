"""Reasoning ("thinking") split out of an answer: `<think>` ... `</think>`.

Thinking models (Qwen3, DeepSeek-R1 distills, SmolLM3) write their reasoning between think tags
before the answer. Some chat templates open the block themselves (the prompt ends in `<think>`),
so the model's output starts inside it and only the closing tag appears; others leave the model
to open it. Which case applies is read from the end of the rendered prompt, not guessed from the
model's name: the output starts inside a thought when the prompt's last think tag is an opening
one. Outside a thought, only an opening tag at the very start of the answer opens one, so that
an answer that talks about the tags is left alone.

A model is a thinking model (the parser is on) when its vocabulary has both tags as single
tokens; `serve --reasoning-parser none` turns it off, `think` forces it on.

Each protocol names the parts its own way: OpenAI chat `reasoning_content`, Ollama `thinking`,
Responses reasoning items, Anthropic thinking blocks.
"""
from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def has_think_tokens(tokenizer) -> bool:
    """Both tags are single tokens in this vocabulary."""
    try:
        return all(len(tokenizer.encode(tag, add_special_tokens=False)) == 1 for tag in (OPEN, CLOSE))
    except Exception:  # a tokenizer that cannot encode the tags has none
        return False


def prompt_opens_thought(tokenizer, prompt_ids: list[int]) -> bool:
    """Whether the rendered prompt ends inside an open think block (the template opened it)."""
    tail = tokenizer.decode(prompt_ids[-32:], skip_special_tokens=False)
    return tail.rfind(OPEN) > tail.rfind(CLOSE)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of text that is a proper start of tag (held back: the
    next delta may complete the tag)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


class ReasoningSplitter:
    """Feeds on an answer's text deltas and hands out (reasoning delta, content delta).
    Whitespace right after a tag is dropped (templates put a newline there)."""

    def __init__(self, in_thought: bool):
        self.state = "thought" if in_thought else "start"   # start | thought | content
        self.pending = ""        # text not yet handed out (a possible tag, or the undecided start)
        self.reasoning = ""
        self.content = ""
        self._trim = in_thought  # drop whitespace at the start of the next part

    def feed(self, delta: str, final: bool = False) -> tuple[str, str]:
        text = self.pending + delta
        self.pending = ""
        r_out, c_out = [], []
        while text:
            if self._trim:
                text = text.lstrip()
                if not text:
                    break
                self._trim = False
            if self.state == "start":
                if OPEN.startswith(text) and not final:
                    self.pending = text  # could still become <think>
                    text = ""
                elif text.startswith(OPEN):
                    self.state, self._trim, text = "thought", True, text[len(OPEN):]
                else:
                    self.state = "content"
            elif self.state == "thought":
                at = text.find(CLOSE)
                if at >= 0:
                    r_out.append(text[:at])
                    self.state, self._trim, text = "content", True, text[at + len(CLOSE):]
                    continue
                hold = 0 if final else _partial_suffix(text, CLOSE)
                r_out.append(text[:len(text) - hold])
                self.pending, text = text[len(text) - hold:], ""
            else:
                c_out.append(text)
                text = ""
        if final and self.pending:  # an unfinished tag at the very end is text
            (r_out if self.state == "thought" else c_out).append(self.pending)
            self.pending = ""
        r, c = "".join(r_out), "".join(c_out)
        self.reasoning += r
        self.content += c
        return r, c

    @classmethod
    def split(cls, text: str, in_thought: bool) -> tuple[str, str]:
        """(reasoning, content) of a whole answer."""
        s = cls(in_thought)
        s.feed(text, final=True)
        return s.reasoning, s.content


async def split_stream(stream, in_thought: bool):
    """RequestOutputs whose samples' text is split: `text` / `text_delta` become the content,
    `reasoning` / `reasoning_delta` are added. Token ids and logprobs are left as they are."""
    splitters: dict[int, ReasoningSplitter] = {}
    async for out in stream:
        for c in out.outputs:
            s = splitters.setdefault(c.index, ReasoningSplitter(in_thought))
            c.reasoning_delta, c.text_delta = s.feed(c.text_delta, final=c.finished)
            c.reasoning, c.text = s.reasoning, s.content
        yield out
