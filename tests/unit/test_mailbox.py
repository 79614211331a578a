"""Outputs from the engine thread to a reader: one merged output per request however slow the
reader, every delta delivered once, and a reader that stops reading cut off."""
import asyncio
import time

import pytest

from tokenmill import SamplingParams
from tokenmill.engine.async_engine import AsyncLLMEngine
from tokenmill.engine.mailbox import Mailbox, SlowReaderError
from tokenmill.engine.outputs import CompletionOutput, RequestOutput


def out(step: int, finished=False) -> RequestOutput:
    ids = list(range(step))
    return RequestOutput("r", None, [1], [CompletionOutput(0, "a" * step, ids, "a", [step - 1],
                                                          finish_reason="stop" if finished else None)], finished)


def test_untaken_outputs_merge_into_one_with_every_delta():
    async def run():
        aborted = []
        box = Mailbox(asyncio.get_running_loop(), 100, lambda: aborted.append(1))
        for step in range(1, 6):
            box.put(out(step))
        first = await box.get()
        box.put(out(6, finished=True))
        last = await box.get()
        return first, last, box, aborted
    first, last, box, aborted = asyncio.run(run())
    c = first.outputs[0]
    assert (c.text, c.token_ids, c.text_delta, c.token_ids_delta) == ("aaaaa", [0, 1, 2, 3, 4], "aaaaa", [0, 1, 2, 3, 4])
    assert last.outputs[0].token_ids_delta == [5] and last.finished
    assert box.waiting is None and not aborted


def test_a_reader_over_the_limit_is_cut_off():
    async def run():
        aborted = []
        box = Mailbox(asyncio.get_running_loop(), 3, lambda: aborted.append(1))
        for step in range(1, 6):
            box.put(out(step))
        with pytest.raises(SlowReaderError, match="did not read"):
            await box.get()
        return aborted
    assert asyncio.run(run()) == [1]


def test_engine_stops_a_stream_nobody_reads(tiny_llm):
    """A real engine: the reader takes the first output, then nothing while the request
    generates; the request is aborted after the limit and frees its blocks."""
    engine = AsyncLLMEngine(tiny_llm.engine, max_unread_tokens=20)

    async def run():
        stream = engine.generate([256, 65, 66], SamplingParams(max_tokens=400, ignore_eos=True))
        await anext(stream)
        deadline = time.time() + 120
        while engine.engine.has_unfinished_requests() and time.time() < deadline:
            await asyncio.sleep(0.05)  # the engine goes on; this reader does not read
        assert not engine.engine.has_unfinished_requests()  # aborted, not run to 400 tokens
        with pytest.raises(SlowReaderError):
            async for _ in stream:
                pass
    try:
        asyncio.run(run())
        assert tiny_llm.engine.block_manager.usage == 0.0
    finally:
        engine.shutdown()


def test_tgi_sends_one_event_per_token_when_outputs_merge(tiny_llm):
    """A reader slower than the engine takes several tokens in one output; TGI's stream still
    has one event per token, and their texts add up to the answer."""
    import json

    from tokenmill.engine.mailbox import merged
    tok = tiny_llm.tokenizer
    outs = []
    eng = tiny_llm.engine
    rid = eng.add_request(prompt="abc", params=SamplingParams(max_tokens=6, ignore_eos=True, temperature=0))
    while eng.has_unfinished_requests():
        outs += [o for o in eng.step() if o.request_id == rid]
    one = outs[0]
    for o in outs[1:]:
        one = merged(one, o)  # every step's output waiting, then taken at once

    async def events():
        from tokenmill.server import tgi

        async def stream():
            yield one
        body = tgi.GenerateRequest(inputs="abc", parameters={"max_new_tokens": 6, "details": True})
        return [e async for e in tgi.stream_events(tok, body.parameters, stream(), "")]
    lines = asyncio.run(events())
    evs = [json.loads(line[5:]) for line in lines]
    assert [e["index"] for e in evs] == list(range(1, 7))
    assert "".join(e["token"]["text"] for e in evs) == one.outputs[0].text
    assert evs[-1]["details"]["generated_tokens"] == 6
