"""--max-loaded-bytes: a budget that holds one model at a time. Estimates (file + KV cache +
64 MiB) with --kv-cache-memory-gib 0.1: the bundled Q4_1 273 MB, the tiny qwen2 175 MB, the
Q8_0 requantization 319 MB; the budget of 300 MiB (314.6 MB) holds either of the first two, not
both, and never the third."""
import httpx
import ollama
import pytest

from server_process import Server
from store.conftest import loaded

BUDGET = 300 * 2**20
MSGS = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def tight(store_dir, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("budget-log") / "server.log")
    s = Server(["--models", store_dir, "--kv-cache-memory-gib", "0.1", "--max-loaded-bytes", str(BUDGET)], log)
    yield s
    s.stop()


def test_alternating_models_load_and_unload_within_the_budget(tight):
    o = ollama.Client(host=tight.url)
    bundled = httpx.get(tight.url + "/v1/models").json()["data"][0]["id"]
    loads, unloads = tight.metric("tokenmill:model_loads_total"), tight.metric("tokenmill:model_unloads_total")
    for _ in range(3):
        for name in ("tiny-qwen2", bundled):
            r = o.chat(model=name, messages=MSGS, options={"num_predict": 4, "temperature": 0})
            assert r.done and r.eval_count > 0
            assert loaded(tight) == {name}  # the other one made room
    assert tight.metric("tokenmill:model_loads_total") - loads == 6
    assert tight.metric("tokenmill:model_unloads_total") - unloads == 6
    assert sum(m.size for m in o.ps().models) <= BUDGET


def test_busy_models_and_a_model_too_large_are_refused_and_disturb_nothing(tight):
    bundled = httpx.get(tight.url + "/v1/models").json()["data"][0]["id"]
    httpx.post(tight.url + "/api/chat", json={"model": bundled, "messages": MSGS, "stream": False,
                                              "options": {"num_predict": 1}}, timeout=300).raise_for_status()
    body = {"model": bundled, "prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": True,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", tight.url + "/v1/completions", json=body, timeout=300) as running:
        lines = running.iter_lines()
        assert next(lines).startswith("data:")  # it is generating: its model is in use
        busy = httpx.post(tight.url + "/v1/chat/completions", json={"model": "tiny-qwen2", "messages": MSGS},
                          timeout=300)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "busy" in busy.json()["error"]["message"]
        big = httpx.post(tight.url + "/api/chat", json={"model": "smollm2-q8_0", "messages": MSGS}, timeout=300)
        assert big.status_code == 507 and "max-loaded-bytes" in big.json()["error"]
        more = [next(lines) for _ in range(20)]  # the running stream goes on
        assert all(line == "" or line.startswith("data:") for line in more)
    assert loaded(tight) == {bundled}
    r = ollama.Client(host=tight.url).chat(model=bundled, messages=MSGS, options={"num_predict": 2})
    assert r.done
