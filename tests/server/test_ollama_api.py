"""The official `ollama` client against a real server."""
import httpx
import ollama
import pytest


@pytest.fixture(scope="module")
def client(tiny_server):
    return ollama.Client(host=tiny_server.url)


MSGS = [{"role": "user", "content": "Hello there"}]
OPTS = {"temperature": 0, "num_predict": 8}


def test_chat_stream_and_not(client, tiny_server):
    whole = client.chat(model="tiny", messages=MSGS, options=OPTS, stream=False)
    assert whole.done and whole.message.role == "assistant"
    assert whole.done_reason in ("length", "stop")
    if whole.done_reason == "length":
        assert whole.eval_count == 8
    else:
        assert 1 <= whole.eval_count <= 8
    count = httpx.post(tiny_server.url + "/tokenize", json={"messages": MSGS}).json()["count"]
    assert whole.prompt_eval_count == count
    parts = list(client.chat(model="tiny", messages=MSGS, options=OPTS, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == whole.message.content
    for done in (whole, parts[-1]):  # the whole request's time holds the prompt's and the answer's
        assert done.total_duration >= done.prompt_eval_duration + done.eval_duration > 0


def test_generate_stream_and_not(client):
    whole = client.generate(model="tiny", prompt="Tell me", options=OPTS, stream=False)
    assert whole.done and whole.response
    parts = list(client.generate(model="tiny", prompt="Tell me", options=OPTS, stream=True))
    assert "".join(p.response for p in parts) == whole.response
    raw = client.generate(model="tiny", prompt="Tell me", options=OPTS, raw=True, stream=False)
    assert raw.prompt_eval_count < whole.prompt_eval_count  # no chat template around it


def test_options_reach_the_sampler(client):
    opts = {"temperature": 1.0, "num_predict": 10}
    a = client.generate(model="tiny", prompt="x", options={"seed": 3, **opts}, stream=False)
    b = client.generate(model="tiny", prompt="x", options={"seed": 3, **opts}, stream=False)
    assert a.response == b.response
    # temperature is not ignored: other seeds give other answers
    others = {client.generate(model="tiny", prompt="x", options={"seed": s, **opts}, stream=False).response
              for s in range(4, 8)}
    assert len(others | {a.response}) > 1


def test_stop_option_cuts_the_answer(client):
    full = client.generate(model="tiny", prompt="x", options={"temperature": 0, "num_predict": 30}, stream=False)
    assert full.eval_count == 30  # this model never says EOS: the limit ends it
    stop = full.response[8:11]
    cut = client.generate(model="tiny", prompt="x", options={"temperature": 0, "num_predict": 30, "stop": [stop]},
                          stream=False)
    assert cut.response == full.response[:full.response.find(stop)]
    assert cut.done_reason == "stop" and cut.eval_count < 30


def test_no_limit_runs_to_the_context(client, tiny_server):
    """num_predict -1 (Ollama's default) and -2: no 16-token cap; num_ctx bounds the answer."""
    for n in (-1, -2):
        r = client.generate(model="tiny", prompt="x", options={"temperature": 0, "num_predict": n, "num_ctx": 64},
                            raw=True, stream=False)
        assert r.prompt_eval_count + r.eval_count == 64 and r.done_reason == "length"
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="tiny", prompt="x" * 80, options={"num_ctx": 32}, raw=True, stream=False)
    assert e.value.status_code == 400


def test_tags_show_ps_version(client, tiny_server):
    tags = client.list()
    assert [m.model for m in tags.models] == ["tiny"]
    assert tags.models[0].details.family == "llama"
    show = client.show("tiny")
    assert "im_start" in show.template and show.modelinfo["general.architecture"] == "llama"
    assert [m.model for m in client.ps().models] == ["tiny"]
    assert httpx.get(tiny_server.url + "/api/version").json()["version"]


def test_unknown_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nope", messages=MSGS)
    assert e.value.status_code == 404 and "nope" in e.value.error


def test_curl_style_form_content_type(tiny_server):
    r = httpx.post(tiny_server.url + "/api/generate", content=b'{"model": "tiny", "prompt": "hi", '
                   b'"stream": false, "options": {"num_predict": 2}}',
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json()["done"] is True
