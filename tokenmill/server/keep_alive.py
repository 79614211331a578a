"""Ollama's keep_alive: how long a model stays loaded after its last request ends."""
from __future__ import annotations

import re

from ..api.errors import APIError

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value, param: str = "keep_alive") -> float | None:
    """Seconds; None: forever (a negative value). Accepts a number of seconds or a Go
    duration ("5m", "1h30m", "-1m", "0"), as Ollama does."""
    if isinstance(value, bool):
        raise APIError(400, f"{param} must be a duration (\"5m\") or a number of seconds", param=param)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _PART.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise APIError(400, f"{param}: cannot read '{value}' as a duration (\"5m\", \"1h\", \"-1\")",
                               param=param) from None
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise APIError(400, f"{param} must be a duration (\"5m\") or a number of seconds", param=param)
    return None if seconds < 0 else seconds
