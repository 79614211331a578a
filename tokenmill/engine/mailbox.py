"""One request's outputs on their way from the engine thread to its reader (the event loop).

Every RequestOutput carries the whole output so far (text, token ids, logprobs) plus what is
new since the last one (the deltas). A queue of them would hold O(T^2) for a reader that has
stopped reading; the mailbox holds one: a new output replaces the waiting one, with the
waiting one's deltas put in front of its own. So memory per request stays O(T) however slow
the reader, and a reader that takes an output after several steps gets every delta once.

A reader that leaves more than `max_unread` tokens untaken (summed over the request's n
samples) is cut off: the request is aborted, so that it frees its batch slot and KV blocks,
and the reader gets SlowReaderError, which the server sends as an error in its protocol.
"""
from __future__ import annotations

import asyncio
import dataclasses

from .outputs import RequestOutput


class SlowReaderError(RuntimeError):
    pass


def merged(old: RequestOutput, new: RequestOutput) -> RequestOutput:
    """`new` with the deltas of `old` (not yet read) in front of its own."""
    before = {c.index: c for c in old.outputs}
    outputs = []
    for c in new.outputs:
        o = before.pop(c.index, None)
        if o is not None:
            c = dataclasses.replace(c, text_delta=o.text_delta + c.text_delta,
                                    token_ids_delta=o.token_ids_delta + c.token_ids_delta)
        outputs.append(c)
    outputs += before.values()  # a sample the newer output does not mention keeps its news
    outputs.sort(key=lambda c: c.index)
    return dataclasses.replace(new, outputs=outputs)


class Mailbox:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_unread: int, abort):
        self.loop, self.max_unread, self.abort = loop, max_unread, abort
        self.waiting: RequestOutput | None = None
        self.error: BaseException | None = None
        self.unread = 0  # tokens in the waiting output's deltas
        self.ready = asyncio.Event()

    def put(self, item) -> None:
        """On the event loop (the engine thread calls it with call_soon_threadsafe)."""
        if self.error is not None:
            return
        if isinstance(item, BaseException):
            self.error = item
        else:
            self.waiting = item if self.waiting is None else merged(self.waiting, item)
            self.unread += sum(len(c.token_ids_delta) for c in item.outputs)
            if self.unread > self.max_unread and not item.finished:
                self.error = SlowReaderError(
                    f"the client did not read its stream: {self.unread} tokens were waiting "
                    f"(limit {self.max_unread}); the request was stopped")
                self.abort()
        self.ready.set()

    async def get(self) -> RequestOutput:
        """The next output (every delta since the last get); raises the request's error once
        the outputs before it have been taken."""
        while True:
            if self.waiting is not None and (self.error is None or not isinstance(self.error, SlowReaderError)):
                out, self.waiting, self.unread = self.waiting, None, 0
                return out
            if self.error is not None:
                raise self.error
            self.ready.clear()
            await self.ready.wait()
