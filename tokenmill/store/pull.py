"""Pulling a GGUF from a Hugging Face repository into the store (`/api/pull`, `tokenmill pull`).

Names as Ollama takes them for Hugging Face: `hf.co/OWNER/REPO[:TAG]` (or without `hf.co/`),
where TAG is a quantization (`Q4_K_M`: the file whose name carries it), a file name, or nothing
(Q4_K_M if the repository has one, else its first GGUF). huggingface_hub lists the repository,
reads the file's metadata (size, sha256 etag) and downloads it (HF_ENDPOINT and HF_TOKEN as it
honours them). The bytes go to DIR/.pulls/OWNER/REPO/FILE.partial, appended to: a pull that
was cut, or whose client left, goes on from there the next time (an HTTP Range request).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading

from .catalog import PULLS_DIR, ModelStore

_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "huggingface.co/", "hf.co/")


class PullError(Exception):
    pass


class Cancelled(Exception):
    pass


def parse_name(name: str) -> tuple[str, str | None]:
    """(OWNER/REPO, tag or file or None)."""
    text = name.strip()
    for p in _PREFIXES:
        if text.startswith(p):
            text = text[len(p):]
            break
    repo, _, tag = text.partition(":")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise PullError(f"cannot pull '{name}': tokenmill pulls GGUF files from Hugging Face repositories, "
                        "named hf.co/OWNER/REPO[:QUANT or FILE]")
    return repo, (tag or None) if tag != "latest" else None


def pick_file(files: list[str], tag: str | None, name: str) -> str:
    ggufs = [f for f in files if f.endswith(".gguf") and "mmproj" not in os.path.basename(f).lower()]
    if tag and tag.endswith(".gguf"):
        if tag in files:
            return tag
        raise PullError(f"'{name}': the repository has no file {tag}")
    if not ggufs:
        raise PullError(f"'{name}': the repository has no GGUF file")
    want = (tag or "Q4_K_M").lower()
    hits = [f for f in ggufs if re.search(rf"(^|[-_.]){re.escape(want)}([-_.]|$)", os.path.basename(f).lower())]
    if hits:
        if re.search(r"-\d{5}-of-\d{5}\.gguf$", hits[0]):
            raise PullError(f"'{name}': {hits[0]} is one part of a split GGUF; split files are not supported yet")
        return sorted(hits)[0]
    if tag:
        raise PullError(f"'{name}': no GGUF file of the repository matches '{tag}' "
                        f"(it has {', '.join(os.path.basename(f) for f in ggufs[:8])})")
    return sorted(ggufs)[0]


class _CountingFile:
    """The partial file, as huggingface_hub's http_get writes it: counts bytes and stops the
    download (an exception out of write) once the pull is cancelled."""

    def __init__(self, f, start: int, cancel: threading.Event):
        self.f, self.done, self.cancel = f, start, cancel

    def write(self, chunk: bytes) -> int:
        if self.cancel.is_set():
            raise Cancelled()
        n = self.f.write(chunk)
        self.done += len(chunk)
        return n

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, *args):
        return self.f.seek(*args)

    def truncate(self, *args):
        return self.f.truncate(*args)

    def flush(self):
        return self.f.flush()


class Puller:
    def __init__(self, store: ModelStore, name: str):
        self.store, self.name = store, name
        self.repo, self.tag = parse_name(name)
        self.endpoint = os.environ.get("HF_ENDPOINT") or None
        self.cancel = threading.Event()
        self.file: _CountingFile | None = None
        self.total = 0
        self.resumed_from = 0

    # ---- steps (each runs in a thread) -------------------------------------------------------
    def _resolve(self):
        from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError
        try:
            files = HfApi(endpoint=self.endpoint).list_repo_files(self.repo)
            filename = pick_file(files, self.tag, self.name)
            meta = get_hf_file_metadata(hf_hub_url(self.repo, filename, endpoint=self.endpoint))
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            raise PullError(f"pull '{self.name}': {'not found' if status in (401, 404) else e}") from e
        return filename, meta

    def _download(self, filename: str, meta) -> str:
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers
        folder = os.path.join(self.store.directory, PULLS_DIR, *self.repo.split("/"))
        os.makedirs(folder, exist_ok=True)
        final = os.path.join(folder, os.path.basename(filename))
        etag = (meta.etag or "").strip('"')
        partial = f"{final}.{etag[:16] or 'noetag'}.partial"
        self.total = meta.size or 0
        if not (os.path.exists(final) and os.path.getsize(final) == self.total):
            start = os.path.getsize(partial) if os.path.exists(partial) else 0
            if self.total and start > self.total:
                os.remove(partial)
                start = 0
            self.resumed_from = start
            with open(partial, "ab") as f:
                self.file = _CountingFile(f, start, self.cancel)
                if not self.total or start < self.total:
                    http_get(meta.location, self.file, resume_size=start, expected_size=self.total or None,
                             headers=build_hf_headers())
            if re.fullmatch(r"[0-9a-f]{64}", etag) and _sha256(partial) != etag:
                os.remove(partial)  # a corrupt file is not resumed from
                raise PullError(f"pull '{self.name}': the sha256 of {filename} does not match its etag; "
                                "the download was removed, pull again")
            os.replace(partial, final)
        self.store.add_name(self.name, final)
        return final

    # ---- the event stream ----------------------------------------------------------------------
    async def events(self):
        """Ollama's pull progress lines; the last is {"status": "success"} or {"error": ...}.
        Leaving early (the client went away) cancels the download; it resumes next time."""
        try:
            yield {"status": "pulling manifest"}
            filename, meta = await asyncio.to_thread(self._resolve)
            digest = "sha256:" + (meta.etag or "").strip('"')
            status = f"pulling {digest[7:19] or os.path.basename(filename)}"
            job = asyncio.ensure_future(asyncio.to_thread(self._download, filename, meta))
            last = None
            while not job.done():
                await asyncio.wait([job], timeout=0.2)
                done = self.file.done if self.file is not None else 0
                if self.total and done != last:
                    last = done
                    yield {"status": status, "digest": digest, "total": self.total, "completed": min(done, self.total)}
            path = job.result()
            yield {"status": status, "digest": digest, "total": self.total, "completed": self.total}
            yield {"status": "verifying sha256 digest"}
            yield {"status": "writing manifest"}
            yield {"status": "success", "path": path}
        except PullError as e:
            yield {"error": str(e)}
        except Exception as e:  # the network, the disk: said to the client, never a crash
            yield {"error": f"pull '{self.name}' failed: {type(e).__name__}: {e}"}
        finally:
            self.cancel.set()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
