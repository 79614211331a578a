"""Tool calling with the openai and ollama clients on the real model (its template knows no
tools: the documented Hermes-style format is used)."""
import json

import jsonschema
import ollama
import openai
import pytest

from tokenmill.server import tools

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
                                           "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def client(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize("choice,names", [("required", {"get_weather", "get_time"}),
                                          ({"type": "function", "function": {"name": "get_time"}}, {"get_time"})])
def test_required_and_named_calls_are_valid(smol, choice, names):
    for seed in range(4):
        r = client(smol).chat.completions.create(model=smol.model, messages=ASK, tools=TOOLS, tool_choice=choice,
                                                 temperature=1, seed=seed, max_tokens=150)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.tool_calls
        for call in ch.message.tool_calls:
            assert call.function.name in names and call.id.startswith("call_")
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_none_gives_no_calls_and_a_tool_result_turn_works(smol):
    r = client(smol).chat.completions.create(model=smol.model, messages=ASK, tools=TOOLS, tool_choice="none",
                                             temperature=0, max_tokens=60)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content
    call = client(smol).chat.completions.create(model=smol.model, messages=ASK, tools=TOOLS, tool_choice="required",
                                                temperature=0, max_tokens=150).choices[0].message.tool_calls[0]
    turn = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                  {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
    r = client(smol).chat.completions.create(model=smol.model, messages=turn, tools=TOOLS, temperature=0, max_tokens=60)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content


def test_streamed_tool_call_deltas(smol):
    """The call streams as it is generated: first delta index, id and name, then the arguments
    in several chunks; joined they equal the non-streamed call."""
    chunks = [c for c in client(smol).chat.completions.create(
        model=smol.model, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=150,
        stream=True) if c.choices]
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    first, rest = deltas[0], deltas[1:]
    assert first.index == 0 and first.id.startswith("call_") and first.function.name in SCHEMAS
    args = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(args), SCHEMAS[first.function.name])
    assert all(d.id is None for d in rest) and len(rest) > 3  # arguments arrive in pieces
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    whole = client(smol).chat.completions.create(model=smol.model, messages=ASK, tools=TOOLS, tool_choice="required",
                                                 temperature=0, max_tokens=150).choices[0].message.tool_calls[0]
    assert (whole.function.name, whole.function.arguments) == (first.function.name, args)


def test_ollama_tools_and_tool_messages(smol):
    o = ollama.Client(host=smol.url)
    r = o.chat(model=smol.model, messages=ASK, tools=TOOLS, options={"temperature": 0, "num_predict": 80})
    # Ollama has no tool_choice: the grammar allows text or a call, and the bundled model, greedy,
    # answers this one in text (measured); the text comes through whole, with no call made up
    assert r.done and r.message.tool_calls is None and r.message.content.startswith("Paris")
    r = o.chat(model=smol.model, options={"temperature": 0, "num_predict": 40}, tools=TOOLS, messages=ASK + [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                           "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "content": "sunny, 21 degrees"}])
    assert r.done and r.message.content


def test_auto_answers_parse_only_well_formed_calls():
    good = '<tool_call>{"name": "get_time", "arguments": {"city": "Oslo"}}</tool_call>'
    calls = tools.parse_calls(good, SCHEMAS, "auto")
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    for text in ("It is sunny.", good + " and more text", '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
                 '<tool_call>{"name": "get_time", "arguments": {"town": "Oslo"}}</tool_call>',
                 '<tool_call>{"name": "get_time", "arguments": </tool_call>'):
        assert tools.parse_calls(text, SCHEMAS, "auto") is None  # stays content


@pytest.mark.parametrize("kw,needle", [
    ({"tool_choice": "required"}, "needs tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0]"),
])
def test_bad_tool_requests_are_400(smol, kw, needle):
    with pytest.raises(openai.BadRequestError) as e:
        client(smol).chat.completions.create(model=smol.model, messages=ASK, max_tokens=5, **kw)
    assert needle in str(e.value)


def test_call_streamer_splits_calls_whatever_the_chunking():
    text = ('[{"name": "get_weather", "arguments": {"city": "Pa\\"ris {x}\\\\", "unit": "celsius"}}, '
            '{"name": "get_time", "arguments": {"city": "Oslo"}}]')
    for step in (1, 2, 5, 11, len(text)):
        reader, deltas = tools.CallStreamer(), []
        for i in range(0, len(text), step):
            deltas += reader.feed(text[i:i + step])
        heads = [d for d in deltas if "id" in d]
        args: dict[int, str] = {}
        for d in deltas:
            if "id" not in d:
                args[d["index"]] = args.get(d["index"], "") + d["function"]["arguments"]
        assert [h["function"]["name"] for h in heads] == ["get_weather", "get_time"]
        assert [json.loads(args[i]) for i in (0, 1)] == [{"city": 'Pa"ris {x}\\', "unit": "celsius"}, {"city": "Oslo"}]


def test_auto_streams_text_as_it_comes(smol):
    """Under auto, a plain answer is not held back: it arrives in many content deltas, equal to
    the non-streamed answer."""
    kw = dict(model=smol.model, messages=[{"role": "user", "content": "Say hello to my friend Ana."}], tools=TOOLS,
              temperature=0, max_tokens=40)
    whole = client(smol).chat.completions.create(**kw).choices[0]
    chunks = [c for c in client(smol).chat.completions.create(stream=True, **kw) if c.choices]
    texts = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    if whole.message.tool_calls:  # the model chose a call: then it comes whole, as a call
        assert any(c.choices[0].delta.tool_calls for c in chunks)
    else:
        assert "".join(texts) == whole.message.content and len(texts) > 3
        assert chunks[-1].choices[0].finish_reason == whole.finish_reason
