import os

import httpx
import pytest


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory, smollm2_path):
    """A store's directory: the bundled SmolLM2 requantized to Q8_0 (gguf-py's quantizer) and a
    tiny random-weight qwen2 GGUF (another family); the bundled model is in the store by default."""
    from store.requant import requantize
    from tiny_models import make_hf_model, save_gguf
    d = str(tmp_path_factory.mktemp("store"))
    requantize(smollm2_path, os.path.join(d, "smollm2-q8_0.gguf"))
    save_gguf(make_hf_model("qwen2", seed=1), os.path.join(d, "tiny-qwen2.gguf"), qtype="Q8_0")
    return d


@pytest.fixture(scope="session")
def hub():
    from store.fake_hub import FakeHub
    h = FakeHub()
    yield h
    h.close()


@pytest.fixture(scope="session")
def store(store_dir, hub, tmp_path_factory):
    """`tokenmill serve --models DIR` (with the bundled model by default): three models."""
    from server_process import Server
    log = str(tmp_path_factory.mktemp("store-log") / "server.log")
    s = Server(["--models", store_dir, "--kv-cache-memory-gib", "0.1"], log, env={"HF_ENDPOINT": hub.url})
    yield s
    s.stop()


def loaded(server) -> set[str]:
    return {m["name"] for m in httpx.get(server.url + "/api/ps", timeout=30).json()["models"]}
