"""The model store: which models a server can load, by name, as Ollama lists them.

A store is one directory (`serve --models DIR`; default: tokenmill/models in the user's data
directory) plus models named on the command line (`--model NAME=PATH`) and the bundled SmolLM2.
Every GGUF file and every Hugging Face directory (config.json + *.safetensors) under the
directory is a model, named by its path below the directory without `.gguf`. Other names
(`/api/copy`, `/api/pull`) live in DIR/names.json, each naming a file; pulled files are kept in
DIR/.pulls, which is not scanned, so that they show only under the name they were pulled as.
Nothing here loads a model: this is files and names.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field

NAMES_FILE = "names.json"
PULLS_DIR = ".pulls"


def default_store_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "tokenmill", "models")


class StoreError(Exception):
    """status: the HTTP status a route answers with (404 unknown name, 400 not allowed)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class StoredModel:
    name: str
    path: str
    removable: bool                  # a file (or name) of the store's directory, not --model / bundled
    alias: bool = False              # a name from names.json
    size: int = 0
    modified_at: float = 0.0
    info: dict = field(default_factory=dict)   # format, family, parameter count, quantization

    @property
    def details(self) -> dict:
        """Ollama's `details` object."""
        n = self.info.get("parameters", 0)
        size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
        fam = self.info.get("family", "unknown")
        return {"parent_model": "", "format": self.info.get("format", "gguf"), "family": fam,
                "families": [fam], "parameter_size": size,
                "quantization_level": self.info.get("quantization", "unknown")}


def canonical(name: str) -> str:
    """Ollama's names carry a tag; `X` and `X:latest` are one model."""
    return name[:-len(":latest")] if name.endswith(":latest") else name


def _file_info(path: str) -> dict:
    """format, family, parameters and quantization from a GGUF header or an HF config."""
    if os.path.isdir(path):
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        from ..estimate import shape_from_hf_dir
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")
        return {"format": "safetensors", "family": cfg.get("model_type", "unknown"),
                "parameters": shape_from_hf_dir(path).params,
                "quantization": {"bfloat16": "BF16", "float16": "F16"}.get(dtype, "F32"),
                "context_length": cfg.get("max_position_embeddings", 0)}
    from gguf import LlamaFileType
    from ..estimate import _prod
    from ..model.loader.gguf_header import read_header
    meta, tensors, buf = read_header(path, big_arrays=False)
    buf.close()
    arch = meta.get("general.architecture", "unknown")
    ft = meta.get("general.file_type")
    try:
        quant = LlamaFileType(ft).name.removeprefix("MOSTLY_") if ft is not None else None
    except ValueError:
        quant = f"type {ft}"
    if quant is None:  # no file type written: the matrices' most common type
        from collections import Counter
        from gguf import GGMLQuantizationType
        kinds = Counter(GGMLQuantizationType(t.type_code).name for t in tensors if len(t.shape) > 1)
        quant = kinds.most_common(1)[0][0] if kinds else "unknown"
    return {"format": "gguf", "family": arch, "parameters": sum(_prod(t.shape) for t in tensors),
            "quantization": quant, "context_length": meta.get(f"{arch}.context_length", 0)}


def _is_hf_dir(path: str) -> bool:
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return "config.json" in names and any(n.endswith(".safetensors") for n in names)


def _stat(path: str) -> tuple[int, float]:
    if os.path.isfile(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime
    files = [os.path.join(path, f) for f in os.listdir(path)]
    files = [f for f in files if os.path.isfile(f)]
    return sum(os.path.getsize(f) for f in files), max((os.path.getmtime(f) for f in files), default=0.0)


class ModelStore:
    def __init__(self, directory: str | None = None, named: dict[str, str] | None = None, scan: bool = True):
        """directory: the store's directory (created when something is written to it);
        named: models given by name on the command line (and the bundled one), listed first;
        scan=False: the named models alone (a Ray engine replica serves its one model)."""
        self.scan = scan
        self.directory = os.path.abspath(os.path.expanduser(directory or default_store_dir()))
        self.named = {canonical(k): os.path.abspath(v) for k, v in (named or {}).items()}
        self._lock = threading.Lock()
        self._info: dict[tuple, dict] = {}     # (path, size, mtime) -> file info
        self._digests: dict[tuple, str] = {}

    # ---- names ---------------------------------------------------------------------------
    def _aliases(self) -> dict[str, str]:
        try:
            with open(os.path.join(self.directory, NAMES_FILE)) as f:
                return {k: v for k, v in json.load(f).items() if isinstance(v, str)}
        except (OSError, ValueError):
            return {}

    def _write_aliases(self, names: dict[str, str]) -> None:
        os.makedirs(self.directory, exist_ok=True)
        tmp = os.path.join(self.directory, NAMES_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(names, f, indent=1, sort_keys=True)
        os.replace(tmp, os.path.join(self.directory, NAMES_FILE))

    def _scan(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if not self.scan or not os.path.isdir(self.directory):
            return found
        for root, dirs, files in os.walk(self.directory):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .pulls, .cache: not scanned
            rel = os.path.relpath(root, self.directory)
            if rel != "." and _is_hf_dir(root):
                found[rel.replace(os.sep, "/")] = root
                dirs[:] = []
                continue
            for f in sorted(files):
                if f.endswith(".gguf") and not f.startswith("."):
                    name = os.path.normpath(os.path.join(rel, f[:-5])).replace(os.sep, "/")
                    found[name] = os.path.join(root, f)
        return found

    def paths(self) -> dict[str, tuple[str, bool, bool]]:
        """name -> (path, removable, alias), command-line names first."""
        out = {n: (p, False, False) for n, p in self.named.items()}
        for n, p in self._scan().items():
            out.setdefault(n, (p, True, False))
        for n, rel in (self._aliases() if self.scan else {}).items():
            p = os.path.join(self.directory, rel)
            if os.path.exists(p):
                out.setdefault(canonical(n), (p, True, True))
        return out

    def resolve(self, name: str) -> StoredModel:
        got = self.paths().get(canonical(name))
        if got is None:
            raise StoreError(404, f"model '{name}' not found")
        return self._entry(canonical(name), *got)

    def list(self) -> list[StoredModel]:
        out = []
        for n, (p, removable, alias) in self.paths().items():
            try:
                out.append(self._entry(n, p, removable, alias))
            except (OSError, ValueError, KeyError):  # a broken file is not a model; skip it
                continue
        return out

    def _entry(self, name: str, path: str, removable: bool, alias: bool) -> StoredModel:
        size, mtime = _stat(path)
        key = (path, size, mtime)
        with self._lock:
            info = self._info.get(key)
        if info is None:
            info = _file_info(path)
            with self._lock:
                self._info[key] = info
        return StoredModel(name, path, removable, alias, size, mtime, info)

    def digest(self, m: StoredModel) -> str:
        """sha256 of the file (of the directory's files, in name order), remembered per
        (path, size, mtime): the first call reads the whole file."""
        key = (m.path, m.size, m.modified_at)
        with self._lock:
            if key in self._digests:
                return self._digests[key]
        h = hashlib.sha256()
        files = [m.path] if os.path.isfile(m.path) else \
            [os.path.join(m.path, f) for f in sorted(os.listdir(m.path))]
        for f in files:
            if os.path.isfile(f):
                with open(f, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        h.update(chunk)
        d = h.hexdigest()
        with self._lock:
            self._digests[key] = d
        return d

    # ---- changes ----------------------------------------------------------------------------
    def copy(self, source: str, destination: str) -> None:
        """A second name for the same file (no bytes copied), as `ollama cp` shares blobs."""
        src = self.resolve(source)
        dest = canonical(destination)
        if not dest or dest.startswith("/") or ".." in dest.split("/"):
            raise StoreError(400, f"invalid model name '{destination}'")
        if dest in self.paths():
            raise StoreError(400, f"model '{destination}' already exists")
        names = self._aliases()
        target = src.path if not src.path.startswith(self.directory + os.sep) \
            else os.path.relpath(src.path, self.directory)
        names[dest] = target
        self._write_aliases(names)

    def add_name(self, name: str, path: str) -> None:
        names = self._aliases()
        names[canonical(name)] = os.path.relpath(path, self.directory)
        self._write_aliases(names)

    def delete(self, name: str) -> StoredModel:
        """Removes the name; the file too when it is in the store's directory and no other
        name of the directory's names.json still points at it."""
        m = self.resolve(name)
        if not m.removable:
            raise StoreError(400, f"model '{name}' is not in the store's directory ({self.directory}); "
                                  "it was named on the command line")
        names = self._aliases()
        names.pop(m.name, None)
        if not m.alias:  # a scanned file: its other names go with it
            names = {k: v for k, v in names.items() if os.path.join(self.directory, v) != m.path}
        self._write_aliases(names)
        still_named = any(os.path.join(self.directory, v) == m.path for v in names.values())
        scanned = m.path in self._scan().values()
        if not still_named and (not m.alias or not scanned) and m.path.startswith(self.directory + os.sep):
            if os.path.isdir(m.path):
                import shutil
                shutil.rmtree(m.path)
            else:
                os.remove(m.path)
        return m
