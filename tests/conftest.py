import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    from tiny_models import make_hf_model, save_hf_dir
    return save_hf_dir(make_hf_model("llama"), str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    from tiny_models import make_hf_model, save_hf_dir
    return save_hf_dir(make_hf_model("qwen2", seed=1), str(tmp_path_factory.mktemp("tiny-qwen2")))


@pytest.fixture(scope="session")
def tiny_llm(tiny_llama_dir):
    from tokenmill import LLM
    return LLM(tiny_llama_dir, kv_cache_memory_gib=0.01, show_progress=False)


@pytest.fixture(scope="session")
def smollm2_path():
    from tokenmill.model.loader import default_model_path
    return default_model_path()


@pytest.fixture(scope="session")
def tiny_server_model(tmp_path_factory):
    """A tiny llama with a long context that (greedy) never ends by itself, so that a request
    can run for many seconds: its EOS logit is pinned at 0, below the top logit."""
    import torch
    from tiny_models import EOS, make_hf_model, save_hf_dir
    path = str(tmp_path_factory.mktemp("tiny-server"))
    model = make_hf_model("llama", seed=7, max_position_embeddings=8192)
    with torch.no_grad():
        model.lm_head.weight[EOS].zero_()
    return save_hf_dir(model, path)
