"""The Anthropic Messages API through the real `anthropic` SDK, on the bundled SmolLM2."""
import json

import anthropic
import httpx
import jsonschema
import pytest

from agents.conftest import KEY

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = [{"name": "get_weather", "description": "Current weather in a city", "input_schema": WEATHER}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"extra_body": {"temperature": 0}}  # the 2.x SDK has no temperature argument


def client(s, key=KEY):
    return anthropic.Anthropic(base_url=s.url, api_key=key, max_retries=0)


def test_create_and_count_tokens(smol_agents):
    c = client(smol_agents)
    messages = [{"role": "user", "content": "Name a fruit."}]
    m = c.messages.create(model=smol_agents.model, max_tokens=30, system="Be brief.", messages=messages, **GREEDY)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"] and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    n = c.messages.count_tokens(model=smol_agents.model, system="Be brief.", messages=messages).input_tokens
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == n
    cut = c.messages.create(model=smol_agents.model, max_tokens=2, messages=messages)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2


def test_stream_equals_create(smol_agents):
    c = client(smol_agents)
    args = dict(model=smol_agents.model, max_tokens=40, messages=[{"role": "user", "content": "Name three colours."}],
                **GREEDY)
    plain = c.messages.create(**args)
    with c.messages.stream(**args) as s:
        events = list(s)
        final = s.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "message_delta" in kinds
    assert final.content[0].text == plain.content[0].text
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == plain.content[0].text
    assert final.stop_reason == plain.stop_reason and final.usage.output_tokens == plain.usage.output_tokens


def test_stop_sequences(smol_agents):
    c = client(smol_agents)
    args = dict(model=smol_agents.model, max_tokens=30, messages=[{"role": "user", "content": "Count from one to ten."}],
                **GREEDY)
    full = c.messages.create(**args).content[0].text
    word = full.split()[2]
    stopped = c.messages.create(**args, stop_sequences=[word])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    assert word not in stopped.content[0].text and full.startswith(stopped.content[0].text)


def test_tool_use_streamed_and_answered(smol_agents):
    c = client(smol_agents)
    with c.messages.stream(model=smol_agents.model, max_tokens=80, messages=ASK, tools=TOOLS,
                           tool_choice={"type": "any", "disable_parallel_tool_use": True}, **GREEDY) as s:
        events = list(s)
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.id.startswith("toolu_")
    jsonschema.validate(use.input, WEATHER)
    partial = "".join(e.delta.partial_json for e in events
                      if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
    assert json.loads(partial) == use.input
    m = c.messages.create(model=smol_agents.model, max_tokens=40, tools=TOOLS, tool_choice={"type": "none"},
                          messages=ASK + [{"role": "assistant", "content": [use.model_dump(include={"type", "id", "name", "input"})]},
                                          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                                        "content": "sunny, 21 C"}]}], **GREEDY)
    assert m.stop_reason in ("end_turn", "max_tokens") and m.content[0].type == "text" and m.content[0].text


def test_named_tool_non_streamed(smol_agents):
    m = client(smol_agents).messages.create(model=smol_agents.model, max_tokens=80, messages=ASK, tools=TOOLS,
                                            tool_choice={"type": "tool", "name": "get_weather",
                                                         "disable_parallel_tool_use": True}, **GREEDY)
    assert m.stop_reason == "tool_use" and m.content[0].type == "tool_use"
    jsonschema.validate(m.content[0].input, WEATHER)


def test_structured_output(smol_agents):
    schema = {"type": "object", "properties": {"fruit": {"type": "string"}}, "required": ["fruit"],
              "additionalProperties": False}
    m = client(smol_agents).messages.create(model=smol_agents.model, max_tokens=40, messages=[
        {"role": "user", "content": "Name a fruit."}], output_config={"format": {"type": "json_schema", "schema": schema}},
        **GREEDY)
    jsonschema.validate(json.loads(m.content[0].text), schema)


def test_wrong_key_gets_anthropic_401(smol_agents):
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(smol_agents, key="wrong").messages.create(model=smol_agents.model, max_tokens=5, messages=ASK)
    assert e.value.status_code == 401
    assert e.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                       "message": "invalid or missing API key"}}


@pytest.mark.parametrize("body,where", [
    ({"messages": ASK}, "max_tokens"),
    ({"max_tokens": 5, "messages": ASK, "container": "c1"}, "container"),
    ({"max_tokens": 5, "messages": ASK, "speed": "fast"}, "speed"),
    ({"max_tokens": 5, "messages": ASK, "output_config": {"effort": "high"}}, "effort"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image"),
    ({"max_tokens": 5, "messages": ASK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search"),
    ({"max_tokens": 5, "messages": ASK, "thinking": {"type": "enabled", "budget_tokens": 10}}, "budget_tokens"),
    ({"max_tokens": 5, "messages": ASK, "nonsense": 1}, "nonsense"),
])
def test_bad_requests_in_anthropic_shape(smol_agents, body, where):
    r = httpx.post(smol_agents.url + "/v1/messages", headers={"x-api-key": KEY},
                   json={"model": smol_agents.model, **body})
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert where in err["error"]["message"]


def test_unknown_model_404(smol_agents):
    with pytest.raises(anthropic.NotFoundError) as e:
        client(smol_agents).messages.create(model="claude-nope", max_tokens=5, messages=ASK)
    assert e.value.body["error"]["type"] == "not_found_error"


def test_assistant_prefill_is_continued(smol_agents):
    """A last assistant message is the start of the answer (as Anthropic has it): the same
    continuation as OpenAI chat's continue_final_message, without the prefill itself."""
    turns = [{"role": "user", "content": "What is the capital of France?"},
             {"role": "assistant", "content": "The capital of France is"}]
    m = client(smol_agents).messages.create(model=smol_agents.model, max_tokens=8, messages=turns, **GREEDY)
    r = httpx.post(smol_agents.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json={
        "model": smol_agents.model, "messages": turns, "max_tokens": 8, "temperature": 0,
        "continue_final_message": True}).json()
    assert m.content[0].text == r["choices"][0]["message"]["content"] and m.content[0].text
    bad = httpx.post(smol_agents.url + "/v1/messages", headers={"Authorization": f"Bearer {KEY}"}, json={
        "model": smol_agents.model, "max_tokens": 5, "messages": [turns[0], {"role": "assistant", "content": "Paris "}]})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"  # (Bearer works too)
