"""Real tokenmill replicas (tiny model) and real routers, all on loopback."""

import pytest

from router_helpers import replica


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
