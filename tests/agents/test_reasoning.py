"""Reasoning split out in every protocol, on a tiny thinking model whose answer is known:
`I think</think>Yes!` after a prompt that opens the think block (tests/thinking_model.py)."""
import anthropic
import httpx
import ollama
import openai
import pytest

from thinking_model import ANSWER, REASONING


def oai(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)


ASK = [{"role": "user", "content": "Is it?"}]


def test_openai_chat_reasoning_content(thinking_server):
    c = oai(thinking_server)
    m = c.chat.completions.create(model="thinker", messages=ASK, temperature=0).choices[0].message
    assert (m.reasoning_content, m.content) == (REASONING, ANSWER)
    chunks = list(c.chat.completions.create(model="thinker", messages=ASK, temperature=0, stream=True))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == REASONING
    assert "".join(d.content or "" for d in deltas) == ANSWER
    first_answer = next(i for i, d in enumerate(deltas) if d.content)
    assert all(not getattr(d, "reasoning_content", None) for d in deltas[first_answer:])  # thinking first


def test_enable_thinking_false_goes_to_the_template(thinking_server):
    c = oai(thinking_server)
    on = c.chat.completions.create(model="thinker", messages=ASK, temperature=0, max_tokens=5)
    off = c.chat.completions.create(model="thinker", messages=ASK, temperature=0, max_tokens=5,
                                    extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    # the template closed an empty think block itself: the model's words are the answer
    assert off.usage.prompt_tokens == on.usage.prompt_tokens + 4  # "\n\n</think>\n\n" after "<think>\n"
    assert getattr(off.choices[0].message, "reasoning_content", None) is None
    assert off.choices[0].message.content == REASONING[:5]


def test_ollama_thinking(thinking_server, embed_server):
    c = ollama.Client(host=thinking_server.url)
    r = c.chat(model="thinker", messages=ASK, think=True)
    assert (r.message.thinking, r.message.content) == (REASONING, ANSWER)
    parts = list(c.chat(model="thinker", messages=ASK, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == REASONING
    assert "".join(p.message.content for p in parts) == ANSWER
    g = c.generate(model="thinker", prompt="Is it?")
    assert (g.thinking, g.response) == (REASONING, ANSWER)
    assert "thinking" in c.show("thinker").capabilities
    with pytest.raises(ollama.ResponseError) as e:  # a model without think tags cannot
        ollama.Client(host=embed_server.url).chat(model="tiny-embed", messages=ASK, think=True)
    assert e.value.status_code == 400 and "does not support thinking" in str(e.value)


def test_responses_reasoning_item(thinking_server):
    c = oai(thinking_server)
    r = c.responses.create(model="thinker", input="Is it?", temperature=0)
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == REASONING and r.output_text == ANSWER
    assert r.usage.output_tokens_details.reasoning_tokens == len(REASONING) + 1  # its bytes and </think>
    with c.responses.stream(model="thinker", input="Is it?", temperature=0) as s:
        events = list(s)
        final = s.get_final_response()
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == REASONING
    kinds = [e.type for e in events]
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    assert final.output_text == ANSWER and final.output[0].type == "reasoning"


def test_anthropic_thinking_blocks(thinking_server):
    c = anthropic.Anthropic(base_url=thinking_server.url, api_key="x", max_retries=0)
    m = c.messages.create(model="thinker", max_tokens=2048, messages=ASK,
                          thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert (m.content[0].thinking, m.content[1].text) == (REASONING, ANSWER)
    with c.messages.stream(model="thinker", max_tokens=64, messages=ASK, thinking={"type": "adaptive"}) as s:
        events = list(s)
        final = s.get_final_message()
    assert "".join(e.delta.thinking for e in events
                   if e.type == "content_block_delta" and e.delta.type == "thinking_delta") == REASONING
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[1].text == ANSWER
    # without `thinking` (Anthropic's default: off) the template is told not to think
    off = c.messages.create(model="thinker", max_tokens=5, messages=ASK)
    assert [b.type for b in off.content] == ["text"] and off.content[0].text == REASONING[:5]


def test_parser_off_keeps_the_text(thinking_model, tmp_path):
    from server_process import Server
    s = Server(["--model", thinking_model, "--served-model-name", "thinker", "--kv-cache-memory-gib", "0.02",
                "--num-threads", "1", "--reasoning-parser", "none"], str(tmp_path / "plain.log"))
    try:
        m = oai(s).chat.completions.create(model="thinker", messages=ASK, temperature=0).choices[0].message
        assert m.content == REASONING + "</think>" + ANSWER
        assert httpx.post(s.url + "/api/chat", json={"model": "thinker", "messages": ASK, "think": True}).status_code == 400
    finally:
        s.stop()


def test_anthropic_budget_tokens_closes_an_endless_thought(tmp_path):
    """A model that would think forever: after budget_tokens of reasoning the block is closed
    and the answer follows."""
    from server_process import Server
    from thinking_model import save_thinking_model
    path = save_thinking_model(str(tmp_path / "endless"), endless=True, context=2048)
    s = Server(["--model", path, "--served-model-name", "thinker", "--kv-cache-memory-gib", "0.02",
                "--num-threads", "1"], str(tmp_path / "endless.log"))
    try:
        c = anthropic.Anthropic(base_url=s.url, api_key="x", max_retries=0)
        m = c.messages.create(model="thinker", max_tokens=1100, messages=ASK,
                              thinking={"type": "enabled", "budget_tokens": 1024})
        assert [b.type for b in m.content] == ["thinking", "text"] and m.content[1].text == ANSWER
        assert m.content[0].thinking.startswith("I think\nI think") and m.stop_reason == "end_turn"
        assert m.usage.output_tokens == 1024 + 1 + len(ANSWER) + 1  # thought, </think>, answer, EOS
    finally:
        s.stop()
