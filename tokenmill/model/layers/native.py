"""Our C++ kernels (tokenmill/csrc), built on first use with torch.utils.cpp_extension and
cached by torch (~/.cache/torch_extensions). If a compiler is missing or the build fails,
callers fall back to the pure-PyTorch path, which the tests compare the kernels against."""
from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_module = None
_failed: str | None = None


def kernels():
    """The compiled module, or None (TOKENMILL_NATIVE=0 turns the kernels off)."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    if os.environ.get("TOKENMILL_NATIVE", "1") == "0":
        _failed = "disabled by TOKENMILL_NATIVE=0"
        return None
    with _lock:
        if _module is None and _failed is None:
            try:
                from torch.utils.cpp_extension import load
                src = os.path.join(os.path.dirname(__file__), "..", "..", "csrc", "paged_attention.cpp")
                _module = load(name="tokenmill_paged_attention_v1", sources=[os.path.abspath(src)],
                               extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"],
                               extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as e:  # no compiler, no headers...: the PyTorch path still works
                _failed = f"{type(e).__name__}: {e}"
    return _module
