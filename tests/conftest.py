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
