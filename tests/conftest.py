import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from server_process import Server, free_port  # noqa: E402

# server subprocesses keep their data (stored Responses) in a directory of this run, never in
# the user's own ~/.local/share
if "TOKENMILL_TEST_DATA" not in os.environ:
    import tempfile
    os.environ["TOKENMILL_TEST_DATA"] = os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="tokenmill-data-")


@pytest.fixture(scope="session")
def llama_cpp_source():
    """llama.cpp's source tree (its converter, its tokenizer tables), fetched once by
    bench/build_llama_server.sh --source."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(["bash", os.path.join(root, "bench", "build_llama_server.sh"), "--source"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


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


@pytest.fixture
def portable_kernels(monkeypatch):
    """The int8 / 4-bit kernels on every machine: their VNNI paths where the CPU has them, else
    their portable C++ paths (the same numbers); skipped only without a compiler."""
    from tokenmill.model.layers.native import kernels
    if kernels() is None:
        pytest.skip("the C++ kernels could not be built here")
    monkeypatch.setenv("TOKENMILL_PORTABLE_KERNELS", "1")


@pytest.fixture(scope="session")
def thinking_model(tmp_path_factory):
    """A tiny thinking model that answers `I think</think>Yes!` (tests/thinking_model.py)."""
    from thinking_model import save_thinking_model
    return save_thinking_model(str(tmp_path_factory.mktemp("thinking-model")))


@pytest.fixture(scope="session")
def thinking_server(thinking_model, tmp_path_factory):
    """One server on the thinking model for the session (agent protocols, the chat page)."""
    s = Server(["--model", thinking_model, "--served-model-name", "thinker", "--kv-cache-memory-gib", "0.02",
                "--num-threads", "1"], str(tmp_path_factory.mktemp("logs") / "thinking.log"))
    yield s
    s.stop()


# ---- the model store (tests/store, tests/web) -----------------------------------------------
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
