"""The server reaches the engine only through EngineClient: every `engine.X` in server/ is a
member the protocol lists (so a remote engine that implements it serves every route)."""
import pathlib
import re

from tokenmill.engine.async_engine import AsyncLLMEngine, EngineClient

SERVER = pathlib.Path(__file__).resolve().parents[2] / "tokenmill" / "server"


def members(cls) -> set[str]:
    return set(getattr(cls, "__annotations__", {})) | {n for n in vars(cls) if not n.startswith("_")}


def test_server_uses_only_engine_client_members():
    listed = members(EngineClient)
    used = set()
    for path in SERVER.glob("*.py"):
        # `engine.X` and `state.engine.X`, not the ..engine package in imports
        used |= set(re.findall(r"(?<!\.\.)(?<!tokenmill\.)\bengine\.([a-z_]+)", path.read_text()))
    assert used and used <= listed, f"the server uses {sorted(used - listed)} beyond EngineClient"


def test_the_in_process_engine_implements_it():
    missing = {m for m in members(EngineClient) if not hasattr(AsyncLLMEngine, m)}
    # the data members are set in __init__: check those on the class's code
    source = (SERVER.parent / "engine" / "async_engine.py").read_text()
    missing = {m for m in missing if f"self.{m} =" not in source}
    assert not missing, missing


def test_a_missing_kernel_build_is_reported(monkeypatch):
    from tokenmill.model.layers import native
    from tokenmill.server.dashboard import kernel_status
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failed", "CalledProcessError: no compiler")
    assert kernel_status() == {"loaded": False, "error": "CalledProcessError: no compiler"}
