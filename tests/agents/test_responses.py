"""The OpenAI Responses API through the real `openai` SDK, on the bundled SmolLM2."""
import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from agents.conftest import KEY

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather in a city",
          "parameters": WEATHER}]


def client(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0)


def test_plain_and_instructions(smol_agents):
    c = client(smol_agents)
    plain = c.responses.create(model=smol_agents.model, input="Say hello in French.", temperature=0,
                               max_output_tokens=24)
    told = c.responses.create(model=smol_agents.model, input="Say hello in French.", temperature=0,
                              max_output_tokens=24, instructions="You answer in one short sentence.")
    for r in (plain, told):
        assert r.object == "response" and r.status in ("completed", "incomplete") and r.output_text
        assert [o.type for o in r.output] == ["message"]
        assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    # the instructions are the prompt's system turn (SmolLM2's template writes its own without one)
    def count(messages):
        return httpx.post(smol_agents.url + "/tokenize", headers={"Authorization": f"Bearer {KEY}"},
                          json={"messages": messages}).json()["count"]
    user = {"role": "user", "content": "Say hello in French."}
    assert plain.usage.input_tokens == count([user])
    assert told.usage.input_tokens == count([{"role": "system", "content": "You answer in one short sentence."}, user])
    assert told.instructions == "You answer in one short sentence."
    cut = c.responses.create(model=smol_agents.model, input="Tell me a long story.", max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage.output_tokens == 3


def test_function_tool_and_its_output(smol_agents):
    c = client(smol_agents)
    r = c.responses.create(model=smol_agents.model, input="What is the weather in Paris?", tools=TOOLS,
                           tool_choice="required", parallel_tool_calls=False, temperature=0,
                           max_output_tokens=60)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and all(o.name == "get_weather" for o in calls)
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
    result = {"type": "function_call_output", "call_id": calls[0].call_id, "output": json.dumps({"sky": "sunny"})}
    chained = c.responses.create(model=smol_agents.model, previous_response_id=r.id, input=[result], tools=TOOLS,
                                 tool_choice="none", temperature=0, max_output_tokens=30)
    assert chained.output_text and [o.type for o in chained.output] == ["message"]
    # the same turn with the whole history sent explicitly: the same prompt, the same answer
    explicit = c.responses.create(model=smol_agents.model, tools=TOOLS, tool_choice="none", temperature=0,
                                  max_output_tokens=30, store=False, input=[
                                      {"role": "user", "content": "What is the weather in Paris?"},
                                      {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                                       "arguments": calls[0].arguments}, result])
    assert explicit.output_text == chained.output_text
    assert explicit.usage.input_tokens == chained.usage.input_tokens


def test_parse_json_schema(smol_agents):
    class City(BaseModel):
        name: str
        country: str
    p = client(smol_agents).responses.parse(model=smol_agents.model, input="Name a city in Japan.",
                                            text_format=City, temperature=0, max_output_tokens=60)
    assert isinstance(p.output_parsed, City) and p.output_parsed.name


def test_stream_events_in_order_and_equal_to_the_plain_answer(smol_agents):
    c = client(smol_agents)
    args = dict(model=smol_agents.model, input="Name three colours.", instructions="Be brief.", temperature=0,
                max_output_tokens=40)
    plain = c.responses.create(**args)
    with c.responses.stream(**args) as s:
        events = list(s)
        final = s.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [i for i, k in enumerate(kinds) if k == "response.output_text.delta"]
    assert deltas and kinds.index("response.output_item.added") < kinds.index("response.content_part.added") < deltas[0]
    assert deltas[-1] < kinds.index("response.output_text.done") < kinds.index("response.content_part.done") \
        < kinds.index("response.output_item.done")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text
    assert final.output_text == plain.output_text and final.status == plain.status
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.usage.output_tokens == plain.usage.output_tokens


def test_streamed_function_call(smol_agents):
    with client(smol_agents).responses.stream(model=smol_agents.model, input="Weather in Rome?", tools=TOOLS,
                                              tool_choice="required", parallel_tool_calls=False, temperature=0,
                           max_output_tokens=60) as s:
        events = list(s)
        final = s.get_final_response()
    call = next(o for o in final.output if o.type == "function_call")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert deltas == done.arguments == call.arguments
    jsonschema.validate(json.loads(call.arguments), WEATHER)


def test_three_turns_retrieve_and_delete(smol_agents):
    c = client(smol_agents)
    turns, prev = ["My name is Ada.", "I live in Paris.", "What is my name?"], None
    for text in turns:
        r = c.responses.create(model=smol_agents.model, input=text, previous_response_id=prev, temperature=0,
                               max_output_tokens=20)
        prev = r.id
    # turn three with the whole conversation given explicitly: the same prompt and answer
    history = c.responses.retrieve(prev)
    assert history.id == prev and history.output_text == r.output_text
    items = c.responses.input_items.list(prev).data
    assert len(items) == 1 and items[0].type == "message"
    c.responses.delete(prev)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(prev)
    with pytest.raises(openai.NotFoundError):
        c.responses.delete(prev)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model=smol_agents.model, input="again", previous_response_id=prev)
    r = c.responses.create(model=smol_agents.model, input="Hi", store=False, max_output_tokens=4)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)


def test_chain_equals_the_explicit_conversation(smol_agents):
    c = client(smol_agents)
    a = c.responses.create(model=smol_agents.model, input="My name is Ada.", temperature=0, max_output_tokens=16)
    b = c.responses.create(model=smol_agents.model, input="I live in Paris.", previous_response_id=a.id,
                           temperature=0, max_output_tokens=16)
    third = c.responses.create(model=smol_agents.model, input="What is my name?", previous_response_id=b.id,
                               temperature=0, max_output_tokens=16)
    explicit = c.responses.create(model=smol_agents.model, temperature=0, max_output_tokens=16, store=False, input=[
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": a.output_text},
        {"role": "user", "content": "I live in Paris."}, {"role": "assistant", "content": b.output_text},
        {"role": "user", "content": "What is my name?"}])
    assert third.usage.input_tokens == explicit.usage.input_tokens > b.usage.input_tokens > a.usage.input_tokens
    assert third.output_text == explicit.output_text


@pytest.mark.parametrize("extra,param", [({"background": True}, "background"),
                                         ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
                                         ({"truncation": "auto"}, "truncation"),
                                         ({"no_such_field": 1}, "no_such_field")])
def test_refused_fields_are_named(smol_agents, extra, param):
    r = httpx.post(smol_agents.url + "/v1/responses", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": smol_agents.model, "input": "hi", **extra})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and param.split(".")[0] in (err["param"] or "") + err["message"]
