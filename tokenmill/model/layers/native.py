"""Our C++ kernels (tokenmill/csrc), built on first use with torch.utils.cpp_extension and
cached by torch (~/.cache/torch_extensions). The module name carries a hash of the source, so
a cached build is imported directly (importing cpp_extension and checking the build costs a
second or more of start-up) and a changed source builds anew. If a compiler is missing or the
build fails, callers fall back to the pure-PyTorch path, which the tests compare kernels against."""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import threading

import torch

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "csrc")
_SOURCES = sorted(os.path.abspath(os.path.join(_DIR, f)) for f in os.listdir(_DIR) if f.endswith(".cpp"))
_HEADERS = sorted(os.path.abspath(os.path.join(_DIR, f)) for f in os.listdir(_DIR) if f.endswith(".h"))
_FLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp"]
_lock = threading.Lock()
_module = None
_failed: str | None = None


def _name() -> str:
    h = hashlib.sha1(" ".join(_FLAGS).encode())
    for path in _SOURCES + _HEADERS:
        with open(path, "rb") as f:
            h.update(f.read())
    digest = h.hexdigest()[:10]
    return f"tokenmill_kernels_{digest}"


def _cached(name: str):
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions")
    flavour = "cpu" if torch.version.cuda is None else f"cu{torch.version.cuda.replace('.', '')}"
    path = os.path.join(base, f"py{sys.version_info.major}{sys.version_info.minor}_{flavour}", name, name + ".so")
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location(name, path,
                                                  loader=importlib.machinery.ExtensionFileLoader(name, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
                name = _name()
                _module = _cached(name)
                if _module is None:
                    from torch.utils.cpp_extension import load
                    _module = load(name=name, sources=_SOURCES, extra_cflags=_FLAGS,
                                   extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as e:  # no compiler, no headers...: the PyTorch path still works
                _failed = f"{type(e).__name__}: {e}"
    return _module


def fused_ops(x: torch.Tensor):
    """The kernel module when x can take the fused row ops (CPU, float32), else None."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    return kernels()
