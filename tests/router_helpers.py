"""Start tokenmill replicas and routers for the router tests."""
from server_process import Server


def replica(model, logs, name="tiny", port=None):
    return Server(["--model", model, "--served-model-name", name, "--kv-cache-memory-gib", "0.02",
                   "--num-threads", "1"], str(logs / f"replica-{name}-{port or 'x'}.log"), port=port)


def router(args, logs, name):
    return Server(["--health-interval", "0.3", *args], str(logs / f"router-{name}.log"), command="router")


def backend_requests(server) -> float:
    """The backend's own count of requests it answered."""
    return server.metric("tokenmill:request_success_total")
