"""How a server ends. An engine that dies (a fault injected with TOKENMILL_FAULT_AT_STEP, never
an HTTP route) tells every waiting or streaming client in its own protocol, /health says 503,
and the process exits non-zero; `serve --replicas` starts it again and the router takes it
out meanwhile. SIGTERM drains: new requests get 503, running ones finish, exit 0."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx

from server_process import Server, UnreadStream, free_port, wait_for

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 2000, "ignore_eos": True}




def start_with_fault(model, log, step, extra=()):
    env = dict(os.environ, TOKENMILL_FAULT_AT_STEP=str(step))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tokenmill.cli", "serve", "--model", model,
                             "--served-model-name", "tiny", "--kv-cache-memory-gib", "0.02", "--port", str(port),
                             "--log-level", "warning", *extra], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _health(url) == 200 or proc.poll() is not None)
    return proc, url


def _health(url):
    try:
        return httpx.get(url + "/health", timeout=5).status_code
    except httpx.HTTPError:
        return None


def test_engine_failure_reaches_every_client_and_the_process_exits(reliability_model, tmp_path):
    proc, url = start_with_fault(reliability_model, str(tmp_path / "fault.log"), step=40)
    results = {}

    def run(name, method):
        try:
            results[name] = method()
        except Exception as e:  # noqa: BLE001 - recorded and asserted on below
            results[name] = e

    def openai_stream():
        with httpx.stream("POST", url + "/v1/chat/completions", json=dict(CHAT, stream=True), timeout=120) as r:
            return [ln for ln in r.iter_lines() if ln.strip()][-1]

    def ollama_stream():
        body = {"model": "tiny", "messages": CHAT["messages"], "options": {"num_predict": 2000}}
        with httpx.stream("POST", url + "/api/chat", json=body, timeout=120) as r:
            return [ln for ln in r.iter_lines() if ln.strip()][-1]

    def tgi_stream():
        body = {"inputs": "go", "parameters": {"max_new_tokens": 2000}}
        with httpx.stream("POST", url + "/generate_stream", json=body, timeout=120) as r:
            return [ln for ln in r.iter_lines() if ln.strip()][-1]

    def openai_whole():
        r = httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=120)
        return r.status_code, r.json()

    threads = [threading.Thread(target=run, args=(n, m)) for n, m in
               (("openai", openai_stream), ("ollama", ollama_stream), ("tgi", tgi_stream), ("whole", openai_whole))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert json.loads(results["openai"][5:])["error"]["message"].startswith("engine failed")
    assert "engine failed" in json.loads(results["ollama"])["error"]
    assert "engine failed" in json.loads(results["tgi"][5:])["error"]
    status, body = results["whole"]
    assert status == 503 and "engine failed" in body["error"]["message"]
    wait_for(lambda: proc.poll() is not None, what="the process did not exit after its engine died")
    assert proc.returncode == 1
    log = open(tmp_path / "fault.log").read()
    assert "InjectedFault" in log


def test_health_is_503_while_the_dead_engine_exits(reliability_model, tmp_path):
    proc, url = start_with_fault(reliability_model, str(tmp_path / "health.log"), step=3)
    codes = []
    r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "go", "max_tokens": 50}, timeout=120)
    assert r.status_code == 503
    while proc.poll() is None:
        codes.append(_health(url))
        time.sleep(0.02)
    assert 503 in codes and 200 not in codes  # never healthy again once dead
    assert proc.returncode == 1


def test_sigterm_drains(reliability_model, tmp_path):
    s = Server(["--model", reliability_model, "--served-model-name", "tiny", "--kv-cache-memory-gib", "0.05",
                "--drain-timeout-s", "120"], str(tmp_path / "drain.log"))
    # a running stream whose client does not read: ~8 MB of answer (top_logprobs), more than the
    # socket buffers hold, so the request cannot end before the client reads again, and the
    # server is certainly still draining when the new request comes
    stream = UnreadStream(s.url, "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 4000,
        "stream": True, "logprobs": True, "top_logprobs": 20, "temperature": 0})
    wait_for(lambda: s.metric("tokenmill:generation_tokens_total") > 0)
    s.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: _health(s.url) == 503)
    r = httpx.post(s.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"]
    assert s.proc.poll() is None
    text = stream.read_all()  # the running request finishes, all of it
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert sum(len((e["choices"][0].get("logprobs") or {}).get("content") or []) for e in events if e["choices"]) == 4000
    assert text.rstrip().endswith("data: [DONE]")
    s.proc.wait(120)
    assert s.proc.returncode == 0


def test_replicas_restart_a_replica_whose_engine_died(reliability_model, tmp_path):
    port = free_port()
    env = dict(os.environ, TOKENMILL_FAULT_AT_STEP="30")
    proc = subprocess.Popen([sys.executable, "-m", "tokenmill.cli", "serve", "--model", reliability_model,
                             "--served-model-name", "tiny", "--kv-cache-memory-gib", "0.02", "--replicas", "2",
                             "--port", str(port), "--health-interval", "0.2", "--ledger",
                             str(tmp_path / "l.db"), "--log-level", "warning"], env=env,
                            stdout=open(tmp_path / "replicas.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            try:
                return httpx.get(url + "/health", timeout=5).json()["healthy_backends"]["default"]
            except (httpx.HTTPError, ValueError, KeyError):
                return None
        wait_for(lambda: healthy() == 2)
        body = {"model": "tiny", "prompt": "go", "max_tokens": 40, "ignore_eos": True}
        codes = [httpx.post(url + "/v1/completions", json=body, timeout=120).status_code for _ in range(4)]
        assert 503 in codes  # each replica's engine dies on its first long request
        wait_for(lambda: "restarting it" in open(tmp_path / "replicas.log").read())
        wait_for(lambda: healthy() == 2, what="the restarted replicas never came back")
        r = httpx.post(url + "/v1/completions", json=dict(body, max_tokens=3), timeout=120)
        assert r.status_code == 200  # short requests stay below the fault
    finally:
        proc.terminate()
        proc.wait(60)
