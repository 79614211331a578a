"""Which files and flags make our C++ kernels, and a digest of them. Plain Python without
imports from tokenmill, so that setup.py can read it before anything is installed: the
install builds tokenmill._kernels with these, and native.py uses that build only while its
digest matches the sources (an edited checkout builds anew)."""
import hashlib
import os

DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "csrc")
# -mf16c with -mavx2 -mfma: the same target as the AVX2 functions (target("avx2,fma,f16c")), so GCC
# inlines their helpers into every caller (a mismatch leaves them as calls in hot loops)
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]


def sources() -> list[str]:
    return sorted(os.path.abspath(os.path.join(DIR, f)) for f in os.listdir(DIR) if f.endswith(".cpp"))


def headers() -> list[str]:
    return sorted(os.path.abspath(os.path.join(DIR, f)) for f in os.listdir(DIR) if f.endswith(".h"))


def digest() -> str:
    h = hashlib.sha1(" ".join(FLAGS).encode())
    for path in sources() + headers():
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:10]
