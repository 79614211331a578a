"""A store on Ray Serve: one engine deployment per model, each with its own replicas; the
ingress sends each request to the deployment of its model."""
import httpx
import pytest

from cluster_helpers import ENGINE, running_replicas, wait_until

MSGS = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def models_app(ray_cluster, tiny_server_model, tiny_qwen2_dir):
    import tempfile

    from ray import serve

    from tokenmill.cluster.app import build_app
    args = {"engine": dict(ENGINE), "server": {}, "num_cpus": 1, "app_name": "models",
            "models": {"tiny": tiny_server_model, "tiny-qwen2": tiny_qwen2_dir},
            "model_options": {"tiny-qwen2": {"replicas": 2}},
            "router": {"ledger_path": tempfile.mkdtemp(prefix="tokenmill-ledger-") + "/ledger.sqlite"}}
    serve.run(build_app(args), name="models", route_prefix="/models")
    wait_until(lambda: running_replicas("models", "engine") == 1 and running_replicas("models", "engine-1") == 2)
    yield ray_cluster.serve_url + "/models"
    serve.delete("models")


def test_one_deployment_per_model_with_its_own_replicas(models_app):
    ids = {m["id"] for m in httpx.get(models_app + "/v1/models", timeout=60).json()["data"]}
    assert {"tiny", "tiny-qwen2"} <= ids
    assert running_replicas("models", "engine") == 1 and running_replicas("models", "engine-1") == 2
    for _ in range(3):
        for model, deployment in (("tiny", "#engine#"), ("tiny-qwen2", "#engine-1#")):
            r = httpx.post(models_app + "/v1/chat/completions", timeout=300,
                           json={"model": model, "messages": MSGS, "max_tokens": 3})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == model and deployment in r.headers["x-tokenmill-replica"]
    r = httpx.post(models_app + "/api/chat", json={"model": "nope", "messages": MSGS}, timeout=60)
    assert r.status_code == 404 and "does not exist" in r.json()["error"]
