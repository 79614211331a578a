"""Helpers for the Ray Serve tests (tests/cluster)."""
import time

ENGINE = {"kv_cache_memory_gib": 0.05, "max_num_seqs": 16}


def running_replicas(app: str, deployment: str = "engine") -> int:
    from ray import serve
    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return 0
    return status.deployments[deployment].replica_states.get("RUNNING", 0)


def wait_until(condition, timeout=300.0, what="the cluster never reached the expected state"):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.1)


def deploy(name: str, model: str, prefix: str, **spec):
    from ray import serve

    from tokenmill.cluster.app import build_app
    import tempfile
    router = dict({"ledger_path": tempfile.mkdtemp(prefix="tokenmill-ledger-") + "/ledger.sqlite"},
                  **spec.pop("router", {}))
    args = {"engine": dict(ENGINE, model=model), "server": {"served_model_name": "tiny"}, "num_cpus": 1,
            "app_name": name, "router": router, **spec}
    serve.run(build_app(args), name=name, route_prefix=prefix)
