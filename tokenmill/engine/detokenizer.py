"""Token ids -> text, one token at a time, with stop strings.

Text is decoded over a short window of previous tokens (prefix_offset..) and only the part
after read_offset is new; a window that ends in U+FFFD is an incomplete UTF-8 character and
waits for the next token. Stop strings may span tokens: we search the tail of the whole text,
and hold back len(longest stop) - 1 characters from the stream until they cannot start a stop.
"""
from __future__ import annotations

from ..sampling_params import SamplingParams

_CONTEXT_TOKENS = 5  # prompt tokens kept as decoding context (leading-space handling)


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams):
        self.tokenizer = tokenizer
        self.skip_special = params.skip_special_tokens
        self.ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""       # all output text so far (cut at a stop string once found)
        self.num_emitted = 0  # characters of self.text already handed out
        self.stops = params.stop
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.max_stop = self.hold + 1
        self.stopped = False

    def add_token(self, token_id: int) -> str | None:
        """Feed one token; returns the stop string if one now appears in the text."""
        self.ids.append(token_id)
        decode = lambda a, b=None: self.tokenizer.decode(self.ids[a:b], skip_special_tokens=self.skip_special)
        prefix = decode(self.prefix_offset, self.read_offset)
        full = decode(self.prefix_offset)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return None  # nothing printable yet
        new = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        start = max(0, len(self.text) - self.max_stop + 1)
        self.text += new
        found = [(pos, stop) for stop in self.stops if (pos := self.text.find(stop, start)) != -1]
        if not found:
            return None
        pos, stop = min(found)  # the earliest stop string wins
        self.text = self.text[:pos]
        self.stopped = True
        return stop

    def flush(self, finished: bool) -> str:
        """Text ready to show: everything once finished, else all but the held-back tail."""
        if finished and not self.stopped and self.read_offset < len(self.ids):
            # tokens still waiting to complete a UTF-8 character never will: show what they are
            tail = self.tokenizer.decode(self.ids[self.prefix_offset:], skip_special_tokens=self.skip_special)
            head = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset],
                                         skip_special_tokens=self.skip_special)
            self.text += tail[len(head):]
            self.read_offset = len(self.ids)
        end = len(self.text) if finished else max(self.num_emitted, len(self.text) - self.hold)
        delta = self.text[self.num_emitted:end]
        self.num_emitted = end
        return delta
