"""tokenmill on Ray Serve, on a local Ray cluster: the same answers as `tokenmill serve` in
every protocol, streaming that really streams and cancels, a replica killed under load
losing no request, autoscaling both ways, a second node with a custom resource, the
KubeRay manifest's Serve config, and prefix affinity that yields to load."""
import concurrent.futures as cf
import json
import os
import time

import httpx
import pytest
import yaml

from cluster_helpers import deploy, running_replicas, wait_until

REPLICA = "x-tokenmill-replica"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def post(url, path, body, timeout=300):
    return httpx.post(url + path, json=body, timeout=timeout)


REQUESTS = [
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "Hi there"}],
                              "max_tokens": 12, "temperature": 0}, lambda r: r["choices"][0]["message"]["content"]),
    ("/v1/completions", {"model": "tiny", "prompt": "Once upon", "max_tokens": 12, "temperature": 0},
     lambda r: r["choices"][0]["text"]),
    ("/api/generate", {"model": "tiny", "prompt": "Once upon", "stream": False,
                       "options": {"num_predict": 12, "temperature": 0}}, lambda r: r["response"]),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": False,
                   "options": {"num_predict": 12, "temperature": 0}}, lambda r: r["message"]["content"]),
    ("/generate", {"inputs": "Once upon", "parameters": {"max_new_tokens": 12}}, lambda r: r["generated_text"]),
    ("/v1/responses", {"model": "tiny", "input": "Hi there", "max_output_tokens": 12, "temperature": 0},
     lambda r: r["output"][0]["content"][0]["text"]),
    ("/v1/messages", {"model": "tiny", "max_tokens": 12, "messages": [{"role": "user", "content": "Hi"}],
                      "temperature": 0}, lambda r: r["content"][0]["text"]),
    ("/v1/embeddings", {"model": "tiny", "input": ["Once upon", "a time"]},
     lambda r: [[round(x, 4) for x in d["embedding"][:8]] for d in r["data"]]),
    ("/api/embed", {"model": "tiny", "input": "Once upon"}, lambda r: [round(x, 4) for x in r["embeddings"][0][:8]]),
]


@pytest.mark.parametrize("path, body, answer", REQUESTS, ids=[r[0] for r in REQUESTS])
def test_same_greedy_answers_as_tokenmill_serve(tm_app, plain_server, path, body, answer):
    ray_answer = post(tm_app, path, body)
    assert ray_answer.status_code == 200, ray_answer.text
    assert ray_answer.headers[REPLICA].startswith("SERVE_REPLICA::tokenmill#engine#")
    assert answer(ray_answer.json()) == answer(post(plain_server.url, path, body).json())


def test_agent_protocols_stream_through_ray(tm_app):
    import anthropic
    import openai
    with anthropic.Anthropic(base_url=tm_app, api_key="x", max_retries=0).messages.stream(
            model="tiny", max_tokens=6, messages=[{"role": "user", "content": "Hi"}]) as s:
        kinds = [e.type for e in s]
        message = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 6
    with openai.OpenAI(base_url=tm_app + "/v1", api_key="x", max_retries=0).responses.stream(
            model="tiny", input="Hi", max_output_tokens=6) as s:
        events = list(s)
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    assert events[-1].response.usage.output_tokens == 6


def test_pages_and_metrics_come_through(tm_app):
    assert "tokenmill" in httpx.get(tm_app + "/").text
    assert "content-security-policy" in httpx.get(tm_app + "/dashboard").headers
    assert "tokenmill:request_success_total" in httpx.get(tm_app + "/metrics").text
    assert httpx.get(tm_app + "/health").json()["status"] == "ok"
    bad = post(tm_app, "/v1/chat/completions", {"model": "tiny", "messages": []})  # the replica's own 400
    assert bad.status_code == 400 and "messages" in bad.text


def replica_running(replica: str, affinity: str) -> float:
    """The running gauge of one named replica, asked through the deployment's own handle with
    the affinity key of the request it serves (by load alone, a call would go to the idle one)."""
    from ray import serve
    handle = serve.get_deployment_handle("engine", app_name="tokenmill")
    for _ in range(400):
        status, headers, body = handle.call.remote("GET", "/metrics", b"", [], b"", affinity=affinity).result()
        if dict(headers)[REPLICA] == replica:
            for line in body.decode().splitlines():
                if line.startswith("tokenmill:num_requests_running"):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0
    raise AssertionError(f"/metrics never reached {replica}")


def test_stream_arrives_while_generating_and_a_leaving_client_cancels(tm_app):
    # no max_tokens: the tiny model writes until its 8k context is full
    from tokenmill.api.affinity import affinity_key
    body = {"model": "tiny", "messages": [{"role": "user", "content": "go on forever"}], "stream": True}
    key = affinity_key(body)
    with httpx.stream("POST", tm_app + "/v1/chat/completions", json=body, timeout=300) as r:
        replica = r.headers[REPLICA]
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
        # the first chunk is here and the stream is held open: the replica is still generating
        wait_until(lambda: replica_running(replica, key) >= 1, what="the first chunk came after the generation")
    wait_until(lambda: replica_running(replica, key) == 0, what="the replica kept generating for a gone client")


def test_a_replica_killed_under_load_loses_no_request(tm_app):
    import ray
    victim = post(tm_app, "/v1/completions", {"model": "tiny", "prompt": "who", "max_tokens": 1}).headers[REPLICA]

    def one(i):
        r = post(tm_app, "/v1/completions", {"model": "tiny", "prompt": f"load {i}", "max_tokens": 48,
                                              "temperature": 0})
        return r.status_code, r.headers.get(REPLICA)
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(40)]
        wait_until(lambda: sum(f.done() for f in futures) >= 4)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        results = [f.result() for f in futures]
    assert [s for s, _ in results if s != 200] == []
    wait_until(lambda: running_replicas("tokenmill") == 2, what="the killed replica did not come back")
    survivors = {name for _, name in results} - {victim}
    fresh = iter(range(10**6))

    def new_replica_serves():  # the ingress learns of the new replica a moment after Serve
        r = post(tm_app, "/v1/completions", {"model": "tiny", "prompt": f"after {next(fresh)}", "max_tokens": 1})
        return r.status_code == 200 and r.headers[REPLICA] not in survivors | {victim}
    wait_until(new_replica_serves, what="the new replica never received traffic")


def test_prefix_affinity_and_load(tm_app):
    shared = "You are a careful assistant. " * 20  # a long common prefix
    seen = {post(tm_app, "/v1/completions", {"model": "tiny", "prompt": shared + f"question {i}", "max_tokens": 2}
                 ).headers[REPLICA] for i in range(8)}
    assert len(seen) == 1  # one replica holds that prefix
    spread = {post(tm_app, "/v1/completions", {"model": "tiny", "prompt": f"{i} distinct prompt {i * 7919}",
                                                "max_tokens": 2}).headers[REPLICA] for i in range(16)}
    assert len(spread) == 2  # different prefixes: both replicas work

    # imbalance: many long requests on one prefix overflow to the other replica. How many overlap
    # at the router depends on the machine's speed, so bursts of 10 go on until one does (a
    # router that never overflows fails at the deadline)
    def long(i):
        return post(tm_app, "/v1/completions", {"model": "tiny", "prompt": shared + f"long {i}", "max_tokens": 400,
                                                 "temperature": 0, "ignore_eos": True}).headers[REPLICA]
    placed, deadline, burst = set(), time.time() + 300, 0
    while len(placed) < 2 and time.time() < deadline:
        with cf.ThreadPoolExecutor(10) as pool:  # new prompts each burst: a repeat is a cache hit
            placed |= set(pool.map(long, range(10 * burst, 10 * burst + 10)))
        burst += 1
    assert len(placed) == 2, placed


def test_autoscaling_up_under_load_and_back_down(ray_cluster, tiny_server_model):
    deploy("auto", tiny_server_model, "/auto", autoscale={
        "min_replicas": 1, "max_replicas": 2, "initial_replicas": 1, "target_ongoing_requests": 1,
        "upscale_delay_s": 0.5, "downscale_delay_s": 3, "metrics_interval_s": 0.5, "look_back_period_s": 1})
    wait_until(lambda: running_replicas("auto") == 1)
    url = ray_cluster.serve_url + "/auto"
    stop = False

    def load(i):
        while not stop:
            r = post(url, "/v1/completions", {"model": "tiny", "prompt": f"auto {i}", "max_tokens": 200})
            assert r.status_code == 200
    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load, i) for i in range(4)]
        try:
            wait_until(lambda: running_replicas("auto") == 2, what="never scaled up to 2 replicas")
        finally:
            stop = True
        for f in futures:
            f.result()
    wait_until(lambda: running_replicas("auto") == 1, what="never scaled back down to 1 replica when idle")
    from ray import serve
    serve.delete("auto")


def test_a_second_node_with_a_custom_resource_serves(ray_cluster, tiny_server_model):
    import ray
    node = ray_cluster.add_node(num_cpus=2, resources={"tokenmill_node2": 1})
    ray_cluster.wait_for_nodes()
    deploy("node2", tiny_server_model, "/node2", replicas=1, resources={"tokenmill_node2": 1})
    wait_until(lambda: running_replicas("node2") == 1)
    r = post(ray_cluster.serve_url + "/node2", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 4})
    assert r.status_code == 200
    actor = ray.get_actor(r.headers[REPLICA], namespace="serve")
    where = ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
    assert where == node.node_id  # placed on the node that has the resource
    from ray import serve
    serve.delete("node2")


def test_cache_limits_and_ledger_shared_by_two_ingress_replicas(ray_cluster, tiny_server_model, redis_url, tmp_path):
    """Two ingress replicas, one Redis (response cache, rate-limit counters), one ledger
    actor: a repeated deterministic request is computed once whichever ingress takes it, a
    key's per-minute budget holds across both, and every request is in the one ledger."""
    from ray import serve
    deploy("shared", tiny_server_model, "/shared", replicas=1, ingress_replicas=2, router={
        "cache_url": redis_url, "ledger_path": str(tmp_path / "ledger.sqlite"), "rate_limit_rpm": 16,
        "api_keys": {"key-a": "tenant-a", "key-b": "tenant-b"}})
    wait_until(lambda: running_replicas("shared", "ingress") == 2 and running_replicas("shared") == 1)
    url = ray_cluster.serve_url + "/shared"

    def ask(key, body):
        return httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                          timeout=300)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "cache me"}], "max_tokens": 6, "temperature": 0}
    answers = [ask("key-a", body) for _ in range(16)]
    assert [a.status_code for a in answers] == [200] * 16
    assert len({a.headers["x-tokenmill-ingress"] for a in answers}) == 2  # both ingress replicas answered
    assert [a.headers["x-tokenmill-cache"] for a in answers].count("miss") == 1
    assert len({a.json()["choices"][0]["message"]["content"] for a in answers}) == 1

    limited = [ask("key-b", dict(body, temperature=1.0, max_tokens=1)) for _ in range(24)]
    assert len({a.headers.get("x-tokenmill-ingress") for a in limited if a.status_code == 200}) == 2
    assert sorted(a.status_code for a in limited) == [200] * 16 + [429] * 8  # one budget, not one per ingress

    from tokenmill.cluster.ledger_actor import SharedLedger
    rows = {r[0]: r for r in SharedLedger("unused", "tokenmill-ledger-shared").report("key")}
    assert rows["tenant-a"][1] == 16 and rows["tenant-a"][2] == 15  # requests, cache hits
    assert rows["tenant-b"][1] == 16
    serve.delete("shared")


def test_kuberay_manifest_serve_config_deploys(ray_cluster, tiny_server_model, tmp_path):
    """The RayService's serveConfigV2 handed to the Serve controller as `serve deploy` does
    (declaratively: the controller imports import_path and builds the app with its args), with
    the model swapped for the tiny one and the app moved off `/`. Last in this file: a
    declarative deploy may take over the cluster's other applications."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema
    manifest = yaml.safe_load(open(os.path.join(ROOT, "deploy", "rayservice.yaml")))
    config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert config == yaml.safe_load(open(os.path.join(ROOT, "deploy", "serve_config.yaml")))
    app = config["applications"][0]
    assert app["import_path"] == "tokenmill.cluster.app:build_app"
    app.update(name="manifest", route_prefix="/manifest")
    app["args"].update(num_cpus=1, autoscale="1:1", app_name="manifest",
                       router={"ledger_path": str(tmp_path / "ledger.sqlite")},
                       engine=dict(app["args"]["engine"], model=tiny_server_model, kv_cache_memory_gib=0.05))
    serve.context._get_global_client().deploy_apps(ServeDeploySchema(**config), _blocking=True)
    r = post(ray_cluster.serve_url + "/manifest", "/v1/chat/completions", {
        "model": app["args"]["server"]["served_model_name"], "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    serve.delete("manifest")
