"""tokenmill: a small, readable LLM inference engine."""
__all__ = ["LLM", "SamplingParams", "EngineConfig"]
__version__ = "0.1.0"


def __getattr__(name):
    # LLM pulls in torch; import it lazily so `import tokenmill` stays cheap.
    if name == "LLM":
        from .llm import LLM
        return LLM
    if name == "SamplingParams":  # imports torch too
        from .sampling_params import SamplingParams
        return SamplingParams
    if name == "EngineConfig":
        from .config import EngineConfig
        return EngineConfig
    raise AttributeError(name)
