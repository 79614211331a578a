"""Builds our C++ kernels (tokenmill/csrc) into tokenmill._kernels when the package is
installed, so that the first `tokenmill serve` does not spend a minute compiling them. Where
there is no compiler the install still succeeds, with a warning: the kernels are then built
on first use (tokenmill/model/layers/native.py), or the PyTorch paths run. Everything else
about the package is in pyproject.toml."""
import importlib.util
import os

from setuptools import setup

_HERE = os.path.dirname(os.path.abspath(__file__))


def _kernel_source():
    # read without importing tokenmill (its __init__ needs what is being installed)
    path = os.path.join(_HERE, "tokenmill", "model", "layers", "kernel_source.py")
    spec = importlib.util.spec_from_file_location("kernel_source", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kernels():
    if os.environ.get("TOKENMILL_NATIVE", "1") == "0":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return [], {}
    ks = _kernel_source()

    class BuildKernels(BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001  (a missing compiler must not fail the install)
                print(f"tokenmill: WARNING: the C++ kernels were not built ({type(e).__name__}: {e}); "
                      f"they will be built on first use, or the PyTorch paths will run")

    ext = CppExtension("tokenmill._kernels", [os.path.relpath(s, _HERE) for s in ks.sources()],
                       extra_compile_args=ks.FLAGS + [f'-DTOKENMILL_SOURCE_DIGEST="{ks.digest()}"'],
                       extra_link_args=ks.LINK_FLAGS)
    return [ext], {"build_ext": BuildKernels}


ext_modules, cmdclass = _kernels()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
