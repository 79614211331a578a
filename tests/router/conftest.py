"""Real tokenmill replicas (tiny model) and real routers, all on loopback."""
import shutil
import socket
import subprocess
import time

import pytest

from router_helpers import replica
from server_process import free_port


@pytest.fixture(scope="session")
def tiny_router_model(tmp_path_factory):
    import torch
    from tiny_models import EOS, make_hf_model, save_hf_dir
    model = make_hf_model("llama", seed=11, max_position_embeddings=4096)
    with torch.no_grad():
        model.lm_head.weight[EOS].zero_()  # greedy answers run to max_tokens
    return save_hf_dir(model, str(tmp_path_factory.mktemp("tiny-router")))


@pytest.fixture(scope="session")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("router-logs")


@pytest.fixture(scope="session")
def replicas(tiny_router_model, logs):
    rs = [replica(tiny_router_model, logs) for _ in range(3)]
    yield rs
    for r in rs:
        r.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (.ci/run installs it: apt-get install redis-server)"
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait()
