"""`tokenmill serve --models DIR`: three models (the bundled SmolLM2, its Q8_0 requantization,
a tiny qwen2), each through the real ollama and openai clients; keep_alive; copy and delete;
/api/pull from a loopback Hugging Face hub, cut midway and resumed."""
import asyncio
import os

import anthropic
import httpx
import ollama
import openai
import pytest

from server_process import rss_kb, wait_for
from store.conftest import loaded

MSGS = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def three(store):
    bundled = httpx.get(store.url + "/v1/models").json()["data"][0]["id"]
    return [bundled, "smollm2-q8_0", "tiny-qwen2"]


def test_every_model_through_the_ollama_and_openai_clients(store, store_dir, three):
    o = ollama.Client(host=store.url)
    listed = {m.model: m for m in o.list().models}
    assert set(three) <= set(listed)
    assert listed["smollm2-q8_0"].details.quantization_level == "Q8_0"
    assert listed[three[0]].details.quantization_level == "Q4_1"
    assert listed["tiny-qwen2"].details.family == "qwen2"
    assert listed["smollm2-q8_0"].size == os.path.getsize(os.path.join(store_dir, "smollm2-q8_0.gguf"))
    for name in three:
        shown = o.show(name)
        assert "completion" in shown.capabilities and shown.details.family in ("llama", "qwen2")
        assert shown.modelinfo["general.architecture"] == shown.details.family
        r = o.chat(model=name, messages=MSGS, options={"num_predict": 8, "temperature": 0})
        assert r.done and r.message.role == "assistant" and r.eval_count > 0
        assert name in {m.model for m in o.ps().models}
    client = openai.OpenAI(base_url=store.url + "/v1", api_key="unused")
    assert set(three) <= {m.id for m in client.models.list().data}
    for name in three:
        c = client.chat.completions.create(model=name, messages=MSGS, max_tokens=8, temperature=0)
        assert c.model == name and c.usage.completion_tokens > 0


def test_sixteen_streams_over_two_models(store, three):
    models = three[:2]

    async def one(client, i):
        name = models[i % 2]
        finish, text = None, ""
        stream = await client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": f"Count to {i + 3}."}], max_tokens=24,
            temperature=0.7, seed=i, stream=True)
        async for chunk in stream:
            assert chunk.model == name
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return name, finish, text

    async def run():
        client = openai.AsyncOpenAI(base_url=store.url + "/v1", api_key="unused", timeout=600)
        return await asyncio.gather(*(one(client, i) for i in range(16)), return_exceptions=True)
    results = asyncio.run(run())
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures
    assert sorted(r[0] for r in results) == sorted(models * 8)
    assert all(r[1] in ("stop", "length") and r[2] for r in results)


def test_unknown_model_is_a_404_in_each_protocol(store):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        openai.OpenAI(base_url=store.url + "/v1", api_key="x").chat.completions.create(
            model="no-such-model", messages=MSGS, max_tokens=2)
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=store.url).chat(model="no-such-model", messages=MSGS)
    assert e.value.status_code == 404
    with pytest.raises(anthropic.NotFoundError):
        anthropic.Anthropic(base_url=store.url, api_key="x").messages.create(
            model="no-such-model", max_tokens=2, messages=MSGS)


def test_keep_alive_zero_frees_the_model_memory(store):
    o = ollama.Client(host=store.url)
    name = "smollm2-q8_0"
    o.generate(model=name, keep_alive=0)
    wait_for(lambda: name not in loaded(store), 60, "the model was not unloaded")
    before = rss_kb(store.proc.pid)
    o.chat(model=name, messages=MSGS, options={"num_predict": 4}, keep_alive=-1)
    size = next(m.size for m in o.ps().models if m.model == name)
    assert next(m.expires_at for m in o.ps().models if m.model == name).year == 2999  # kept
    during = rss_kb(store.proc.pid)
    assert (during - before) * 1024 > 0.9 * size  # what /api/ps says it holds is what loading took
    r = o.generate(model=name, keep_alive=0)
    assert r.done_reason == "unload"
    wait_for(lambda: name not in loaded(store), 60, "the model was not unloaded")
    freed = (during - rss_kb(store.proc.pid)) * 1024
    assert abs(freed - size) <= 0.1 * size, (freed, size)


def test_keep_alive_runs_out(store):
    o = ollama.Client(host=store.url)
    o.chat(model="tiny-qwen2", messages=MSGS, options={"num_predict": 2}, keep_alive="1s")
    wait_for(lambda: "tiny-qwen2" not in loaded(store), 120, "keep_alive never unloaded the model")
    again = o.chat(model="tiny-qwen2", messages=MSGS, options={"num_predict": 2})  # loads again on demand
    assert "tiny-qwen2" in loaded(store) and again.load_duration > 0
    assert o.chat(model="tiny-qwen2", messages=MSGS, options={"num_predict": 2}).load_duration == 0


def test_copy_and_delete(store, store_dir):
    o = ollama.Client(host=store.url)
    o.copy("tiny-qwen2", "tiny-copy")
    assert "tiny-copy" in {m.model for m in o.list().models}
    assert o.chat(model="tiny-copy", messages=MSGS, options={"num_predict": 2}).done
    o.delete("tiny-copy")
    names = {m.model for m in o.list().models}
    assert "tiny-copy" not in names and "tiny-qwen2" in names
    assert os.path.exists(os.path.join(store_dir, "tiny-qwen2.gguf"))  # the name went, not the file
    with pytest.raises(ollama.ResponseError) as e:  # named on the command line, not the store's
        o.delete(next(iter(names - {"smollm2-q8_0", "tiny-qwen2"})))
    assert e.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as e:
        o.copy("no-such-model", "x")
    assert e.value.status_code == 404


def test_pull_streams_progress_resumes_and_serves(store, store_dir, hub):
    q8 = os.path.join(store_dir, "smollm2-q8_0.gguf")
    hub.add("test/SmolLM2-GGUF", {"SmolLM2-Q8_0.gguf": q8, "README.md": q8})
    name = "hf.co/test/SmolLM2-GGUF:Q8_0"
    size = os.path.getsize(q8)
    hub.cut_after = 32 * 2**20  # the connection drops after 32 MiB; every retry is dropped too
    with httpx.stream("POST", store.url + "/api/pull", json={"model": name}, timeout=300) as r:
        lines = [httpx.Response(200, content=line).json() for line in r.iter_lines() if line]
    assert lines[0] == {"status": "pulling manifest"} and "error" in lines[-1]
    partial = [f for f in os.listdir(os.path.join(store_dir, ".pulls", "test", "SmolLM2-GGUF"))
               if f.endswith(".partial")]
    kept = os.path.getsize(os.path.join(store_dir, ".pulls", "test", "SmolLM2-GGUF", partial[0]))
    assert 0 < kept < size
    hub.cut_after, hub.cut_done, hub.bytes_sent = None, False, 0
    hub.ranges.clear()
    events = list(ollama.Client(host=store.url, timeout=300).pull(name, stream=True))
    assert events[-1].status == "success"
    progress = [e for e in events if e.total]
    assert progress and progress[0].completed >= kept and progress[-1].completed == size
    assert hub.ranges == [f"bytes={kept}-"] and hub.bytes_sent == size - kept  # resumed, not restarted
    r = ollama.Client(host=store.url).chat(model=name, messages=MSGS, options={"num_predict": 4, "temperature": 0})
    assert r.done and r.eval_count > 0
    assert name in {m.model for m in ollama.Client(host=store.url).list().models}
    with httpx.stream("POST", store.url + "/api/pull", json={"model": "hf.co/test/no-such-repo"}, timeout=60) as r:
        last = [line for line in r.iter_lines() if line][-1]
    assert "not found" in httpx.Response(200, content=last).json()["error"]
    bad = httpx.post(store.url + "/api/pull", json={"model": "just-a-name"}, timeout=60)
    assert bad.status_code == 400 and "Hugging Face" in bad.json()["error"]


def test_metrics_and_dashboard_carry_the_model(store, three):
    for name in three[:2]:
        httpx.post(store.url + "/v1/completions", json={"model": name, "prompt": "a", "max_tokens": 2},
                   timeout=300).raise_for_status()
    text = httpx.get(store.url + "/metrics").text
    for name in three[:2]:  # each model's requests under its own label
        assert f'tokenmill:request_success_total{{finished_reason="length",model_name="{name}"}}' in text
    for name in loaded(store):
        assert f'tokenmill:model_loaded_bytes{{model_name="{name}"}}' in text

    def shown():
        latest = httpx.get(store.url + "/tokenmill/dashboard").json()["latest"]
        return latest and {m["name"] for m in latest["detail"]["models"]} == loaded(store)
    wait_for(shown, 60, "the dashboard does not show the loaded models")


def test_cli_pull_list_and_ps(store, store_dir, hub, tmp_path):
    import subprocess
    import sys
    hub.add("test/tiny-GGUF", {"tiny-Q8_0.gguf": os.path.join(store_dir, "tiny-qwen2.gguf")})
    d = str(tmp_path / "cli-store")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "tokenmill.cli", *args], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "HF_ENDPOINT": hub.url})
    r = cli("pull", "hf.co/test/tiny-GGUF", "--models", d)
    assert r.returncode == 0 and r.stdout.strip().endswith("success"), r.stdout + r.stderr
    assert "hf.co/test/tiny-GGUF" in cli("list", "--models", d).stdout
    r = cli("pull", "hf.co/test/tiny-GGUF:Q2_K", "--models", d)
    assert r.returncode == 1 and "matches 'Q2_K'" in r.stderr
    ps = cli("ps", "--url", store.url).stdout.splitlines()
    assert ps[0].split() == ["NAME", "SIZE", "CONTEXT", "UNTIL"] and len(ps) == 1 + len(loaded(store))
