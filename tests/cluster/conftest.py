"""One local Ray cluster for the whole Ray Serve suite (ray.cluster_utils.Cluster: a head now,
a second node added by the test that needs one), no Ray dashboard, a small object store;
Serve's HTTP proxy on a free loopback port."""
import pytest

from cluster_helpers import deploy, running_replicas, wait_until
from server_process import Server, free_port


@pytest.fixture(scope="session")
def ray_cluster():
    import os
    # Serve kills a proxy that is not ready within 5 s (and serve.start then fails): on a busy
    # 2-core machine starting one can take longer. The cluster's processes inherit these.
    for name in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        os.environ.setdefault(name, "120")
    import ray  # the ray extra is part of the test install
    from ray import serve
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 8, "include_dashboard": False, "object_store_memory": 100 * 2**20})
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cluster.serve_url = f"http://127.0.0.1:{port}"
    yield cluster
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def tm_app(ray_cluster, tiny_server_model):
    """Two engine replicas of the tiny model at /."""
    deploy("tokenmill", tiny_server_model, "/", replicas=2)
    wait_until(lambda: running_replicas("tokenmill") == 2)
    return ray_cluster.serve_url


@pytest.fixture(scope="session")
def plain_server(tiny_server_model, tmp_path_factory):
    """`tokenmill serve` on the same model and settings, one thread like a replica."""
    s = Server(["--model", tiny_server_model, "--served-model-name", "tiny", "--kv-cache-memory-gib", "0.05",
                "--max-num-seqs", "16", "--num-threads", "1"], str(tmp_path_factory.mktemp("logs") / "plain.log"))
    yield s
    s.stop()
