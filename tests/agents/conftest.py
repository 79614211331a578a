"""Real servers for the agent protocols: the bundled SmolLM2 behind an API key (Responses,
Anthropic Messages, tools, LangChain), a tiny float32 model for embeddings (compared with
transformers), and the session's thinking model (tests/conftest.py)."""
import pytest

from server_process import Server

KEY = "agents-key"
SMOL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture(scope="session")
def smol_agents(tmp_path_factory):
    s = Server(["--api-key", KEY, "--max-num-seqs", "16"], str(tmp_path_factory.mktemp("logs") / "agents.log"))
    s.model = SMOL
    yield s
    s.stop()


@pytest.fixture(scope="session")
def embed_server(tiny_llama_dir, tmp_path_factory):
    s = Server(["--model", tiny_llama_dir, "--served-model-name", "tiny-embed", "--quantization", "none",
                "--kv-cache-memory-gib", "0.02", "--num-threads", "1"],
               str(tmp_path_factory.mktemp("logs") / "embed.log"))
    yield s
    s.stop()
