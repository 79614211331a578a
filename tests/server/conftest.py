"""Real `tokenmill serve` processes on loopback, on a tiny random model (fast) or the
bundled SmolLM2."""
import pytest

from server_process import Server


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
def tiny_server(tiny_server_model, tmp_path_factory):
    s = Server(["--model", tiny_server_model, "--served-model-name", "tiny",
                "--kv-cache-memory-gib", "0.05"], str(tmp_path_factory.mktemp("logs") / "tiny.log"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def smol_server(tmp_path_factory):
    s = Server(["--max-num-seqs", "32"], str(tmp_path_factory.mktemp("logs") / "smol.log"))
    yield s
    s.stop()
