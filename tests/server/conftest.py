"""Real `tokenmill serve` processes on loopback, on a tiny random model (fast) or the
bundled SmolLM2."""
import pytest

from server_process import Server


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
