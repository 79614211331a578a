import pytest

from server_process import Server


@pytest.fixture(scope="session")
def smol(tmp_path_factory):
    """The bundled SmolLM2: structured output is about what a real model does under a grammar."""
    s = Server(["--max-num-seqs", "32"], str(tmp_path_factory.mktemp("logs") / "structured.log"))
    yield s
    s.stop()
