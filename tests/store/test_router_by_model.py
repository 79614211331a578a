"""The router in front of two backends that serve different models: each request goes to a
backend that has its model; a model neither has is a 404 in the client's own protocol."""
import anthropic
import httpx
import ollama
import openai
import pytest

from router_helpers import router
from server_process import Server

MSGS = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def other(tiny_llama_dir, tmp_path_factory):
    """A second backend with one model of its own, `tiny`."""
    s = Server(["--model", f"tiny={tiny_llama_dir}", "--kv-cache-memory-gib", "0.02"],
               str(tmp_path_factory.mktemp("other-log") / "server.log"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def front(store, other, tmp_path_factory):
    logs = tmp_path_factory.mktemp("router-by-model")
    r = router(["--backend", store.url, "--backend", other.url, "--ledger", str(logs / "ledger.db"),
                "--no-cache"], logs, "by-model")
    yield r
    r.stop()


def test_each_request_goes_to_a_backend_with_its_model(front, store, other):
    assert httpx.get(other.url + "/v1/models").json()["data"][0]["id"] == "tiny"
    client = openai.OpenAI(base_url=front.url + "/v1", api_key="x", max_retries=0)
    for _ in range(3):
        for model, backend in (("smollm2-q8_0", store), ("tiny", other), ("tiny-qwen2", store)):
            raw = client.chat.completions.with_raw_response.create(model=model, messages=MSGS, max_tokens=3)
            assert raw.headers["x-tokenmill-backend"] == backend.url
            assert raw.parse().model == model
    for model, backend in (("smollm2-q8_0", store), ("tiny", other), ("tiny-qwen2", store)):
        assert front.metric("tokenmill_router:model_requests_total",
                            label=f'backend="{backend.url}",model="{model}"') == 3
    assert front.metric("tokenmill_router:model_requests_total", label=f'backend="{other.url}",model="smollm2') == 0
    o = ollama.Client(host=front.url)
    assert o.chat(model="tiny", messages=MSGS, options={"num_predict": 2}).done
    names = {m.model for m in o.list().models}
    assert {"smollm2-q8_0", "tiny-qwen2", "tiny"} <= names
    ids = {m.id for m in client.models.list().data}
    assert {"smollm2-q8_0", "tiny"} <= ids


def test_a_model_no_backend_has_is_a_404_in_each_protocol(front):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        openai.OpenAI(base_url=front.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="no-such-model", messages=MSGS, max_tokens=2)
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=front.url).chat(model="no-such-model", messages=MSGS)
    assert e.value.status_code == 404
    with pytest.raises(anthropic.NotFoundError):
        anthropic.Anthropic(base_url=front.url, api_key="x", max_retries=0).messages.create(
            model="no-such-model", max_tokens=2, messages=MSGS)


def test_hybrid_routes_name_a_small_and_a_large_model_of_one_store(store, tmp_path_factory):
    logs = tmp_path_factory.mktemp("router-hybrid-store")
    r = router(["--route", f"small={store.url}", "--route", f"large={store.url}",
                "--route-model", "small=tiny-qwen2", "--route-model", "large=smollm2-q8_0",
                "--ledger", str(logs / "ledger.db"), "--no-cache"], logs, "hybrid-store")
    try:
        client = openai.OpenAI(base_url=r.url + "/v1", api_key="x", max_retries=0)
        easy = client.chat.completions.with_raw_response.create(model="auto", messages=MSGS, max_tokens=2)
        assert easy.headers["x-tokenmill-route"] == "small" and easy.parse().model == "tiny-qwen2"
        hard = [{"role": "user", "content": "Analyze step by step and prove rigorously: " + "why? " * 400 +
                 "\n```python\ndef f(x):\n    return x\n```\n1. first\n2. second\n3. third"}]
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=hard, max_tokens=2)
        assert raw.headers["x-tokenmill-route"] == "large" and raw.parse().model == "smollm2-q8_0"
    finally:
        r.stop()
