"""huggingface_hub's InferenceClient.text_generation against a real server (TGI protocol)."""
import pytest
from huggingface_hub import InferenceClient


@pytest.fixture(scope="module")
def client(tiny_server):
    return InferenceClient(base_url=tiny_server.url)


def test_text_generation_plain_and_details(client):
    text = client.text_generation("The sky is", max_new_tokens=6)
    assert isinstance(text, str) and text
    out = client.text_generation("The sky is", max_new_tokens=6, details=True)
    assert out.generated_text == text  # greedy by default, as TGI
    d = out.details
    assert d.generated_tokens == len(d.tokens) <= 6
    assert d.finish_reason in ("length", "eos_token")
    assert all(t.logprob <= 0 for t in d.tokens)


def test_text_generation_stream(client):
    whole = client.text_generation("The sky is", max_new_tokens=10)
    pieces = list(client.text_generation("The sky is", max_new_tokens=10, stream=True))
    assert "".join(pieces) == whole
    events = list(client.text_generation("The sky is", max_new_tokens=10, stream=True, details=True))
    assert events[-1].generated_text == whole
    assert events[-1].details.generated_tokens == len(events)
    assert [e.index for e in events] == list(range(1, len(events) + 1))  # one event per token
    assert "".join(e.token.text for e in events) == whole
    assert all(e.details is None for e in events[:-1])


def test_sampling_and_stop(client):
    a = client.text_generation("Hi", max_new_tokens=8, do_sample=True, temperature=0.9, seed=4)
    b = client.text_generation("Hi", max_new_tokens=8, do_sample=True, temperature=0.9, seed=4)
    assert a == b
    # and the sampler really samples: other seeds give other answers (not greedy in disguise)
    others = {client.text_generation("Hi", max_new_tokens=8, do_sample=True, temperature=0.9, seed=s)
              for s in range(5, 9)}
    greedy = client.text_generation("Hi", max_new_tokens=8)
    assert len(others | {a}) > 1 and others != {greedy}
    full = client.text_generation("The sky is", max_new_tokens=20)
    assert len(full) >= 7
    out = client.text_generation("The sky is", max_new_tokens=20, stop=[full[4:7]], details=True)
    assert out.details.finish_reason == "stop_sequence"
    assert out.generated_text == full[:full.find(full[4:7])]


def test_info(tiny_server):
    import httpx
    info = httpx.get(tiny_server.url + "/info").json()
    assert info["model_id"] == "tiny" and info["max_total_tokens"] > info["max_input_tokens"]
