"""tokenmill: a small, readable LLM inference engine."""
from .sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "EngineConfig"]
__version__ = "0.1.0"


def __getattr__(name):
    # LLM pulls in torch; import it lazily so `import tokenmill` stays cheap.
    if name == "LLM":
        from .llm import LLM
        return LLM
    if name == "EngineConfig":
        from .config import EngineConfig
        return EngineConfig
    raise AttributeError(name)
