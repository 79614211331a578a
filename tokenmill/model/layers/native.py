"""Our C++ kernels (tokenmill/csrc). The install builds them (setup.py: tokenmill._kernels);
where that build is missing or older than the sources, they are built on first use with
torch.utils.cpp_extension and cached by torch (~/.cache/torch_extensions). The module name
carries a digest of the sources (kernel_source.py), so a cached build is imported directly
(importing cpp_extension and checking the build costs a second or more of start-up) and a
changed source builds anew. If a compiler is missing or the build fails, callers fall back to
the pure-PyTorch path, which the tests compare kernels against; the server says so."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import threading

import torch

from . import kernel_source

_lock = threading.Lock()
_module = None
_failed: str | None = None


def _name() -> str:
    return f"tokenmill_kernels_{kernel_source.digest()}"


def _installed():
    """The build made by the install, if it was made from these sources."""
    try:
        from tokenmill import _kernels
    except ImportError:
        return None
    return _kernels if getattr(_kernels, "source_digest", None) == kernel_source.digest() else None


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
                _module = _installed() or _cached(name)
                if _module is None:
                    print("tokenmill: compiling the C++ kernels for this machine (once; about a minute)...",
                          flush=True)
                    from torch.utils.cpp_extension import load
                    _module = load(name=name, sources=kernel_source.sources(), extra_cflags=kernel_source.FLAGS,
                                   extra_ldflags=kernel_source.LINK_FLAGS, verbose=False)
            except Exception as e:  # no compiler, no headers...: the PyTorch path still works
                _failed = f"{type(e).__name__}: {e}"
                print(f"tokenmill: WARNING: the C++ kernels could not be built ({_failed[:300]}); "
                      f"running on the slower PyTorch paths", flush=True)
    return _module


def fused_ops(x: torch.Tensor):
    """The kernel module when x can take the fused row ops (CPU, float32), else None."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    return kernels()
