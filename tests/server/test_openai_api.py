"""The official `openai` client against a real server."""
import httpx
import openai
import pytest


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0)


MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]


def prompt_count(server, **body):
    return httpx.post(server.url + "/tokenize", json=body).json()["count"]


def test_chat_usage_matches_tokenize(client, tiny_server):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=7, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == prompt_count(tiny_server, messages=MSGS)
    assert r.usage.completion_tokens == 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7


def test_chat_stream_with_usage(client, tiny_server):
    kw = dict(model="tiny", messages=MSGS, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    choice_chunks = [c for c in chunks if c.choices]
    assert choice_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in choice_chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in choice_chunks) == whole
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == 12
    assert usage.usage.prompt_tokens == prompt_count(tiny_server, messages=MSGS)
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_with_logprobs_and_prompt_list(client, tiny_server):
    r = client.completions.create(model="tiny", prompt="Once upon", max_tokens=5, temperature=0,
                                  logprobs=2, extra_body={"ignore_eos": True})
    c = r.choices[0]
    assert len(c.logprobs.tokens) == 5 and len(c.logprobs.token_logprobs) == 5
    assert all(len(t) <= 2 for t in c.logprobs.top_logprobs)
    assert all(lp <= 0 for lp in c.logprobs.token_logprobs)
    assert "".join(c.logprobs.tokens) == c.text
    assert r.usage.prompt_tokens == prompt_count(tiny_server, prompt="Once upon")
    r2 = client.completions.create(model="tiny", prompt=["a", "bb"], max_tokens=3, temperature=0,
                                   extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r2.choices) == [0, 1] and r2.usage.completion_tokens == 6


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4, temperature=0,
                                       logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)  # greedy: the top one


def test_n_and_seed(client):
    kw = dict(model="tiny", messages=MSGS, max_tokens=10, temperature=1.0, extra_body={"ignore_eos": True})
    a = client.chat.completions.create(n=2, seed=5, **kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert a.choices[0].message.content != a.choices[1].message.content
    b = client.chat.completions.create(n=2, seed=5, **kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    other = client.chat.completions.create(n=1, seed=6, **kw)
    assert other.choices[0].message.content != a.choices[0].message.content


def test_stop(client):
    kw = dict(model="tiny", messages=MSGS, max_tokens=30, temperature=0, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kw).choices[0].message.content
    stop = full[6:9]
    r = client.chat.completions.create(stop=[stop, "never-there"], **kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[:full.find(stop)]


def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]


def test_unsupported_parameters_are_refused(client):
    for extra in ({"audio": {"voice": "alloy", "format": "wav"}},):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=MSGS, **extra)
        assert "not supported" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument"):
        client.chat.completions.create(model="tiny", messages=MSGS, extra_body={"bogus": 1})


def test_tokenize_detokenize_roundtrip(tiny_server):
    ids = httpx.post(tiny_server.url + "/tokenize", json={"prompt": "héllo 🙂", "add_special_tokens": False}).json()
    assert ids["count"] == len(ids["tokens"]) and ids["max_model_len"] > 0
    back = httpx.post(tiny_server.url + "/detokenize", json={"tokens": ids["tokens"]}).json()
    assert back["prompt"] == "héllo 🙂"
