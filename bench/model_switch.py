"""Time to switch models: `tokenmill serve --models DIR` loading a real-shape GGUF on demand,
against reading the same file.

    python bench/model_switch.py [--shape 1b] [--repeats 3] [--kv-cache-memory-gib 0.25]

The file: random weights in llama.cpp's Q4_K_M layout at the Llama-3.2-1B shape (bench/shapes.py
writes it once into ~/.cache/tokenmill/shapes). The server starts with the bundled model loaded;
each round an empty /api/generate naming the 1B model loads it (Ollama's way to load), timed from
the request to the answer, then `keep_alive: 0` unloads it. Cold rounds drop the page cache first
(root only: drop_caches), as the file read they are compared with does; warm rounds do not.
Each round also times a one-token answer to a short prompt with the model unloaded (it loads on
demand) and again once it is loaded: the difference is what switching adds to a real answer,
whatever of the load goes on after the model is declared ready (its KV cache's pages are faulted
in by a thread while the first requests run). Prints the file's size, the reads, and both
measures against the read of the same kind.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes import cold_read_s, drop_page_cache, model_file, sampled_ready  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1b", choices=["1b", "3b", "8b"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-cache-memory-gib", default="0.25")
    ap.add_argument("--port", type=int, default=8123)
    args = ap.parse_args()

    path = model_file(args.shape)
    name = f"llama-{args.shape}"
    store = tempfile.mkdtemp(prefix="tokenmill-switch-")
    os.symlink(path, os.path.join(store, name + ".gguf"))
    size = os.path.getsize(path)
    print(f"file: {path} ({size / 1e9:.2f} GB)")
    reads_cold = [r for r in (cold_read_s(path) for _ in range(args.repeats)) if r is not None]
    reads_warm = [cold_read_s(path, cold=False) for _ in range(args.repeats)]

    url = f"http://127.0.0.1:{args.port}"
    proc, _, _ = sampled_ready([sys.executable, "-m", "tokenmill.cli", "serve", "--models", store,
                                "--kv-cache-memory-gib", args.kv_cache_memory_gib, "--log-level", "warning"],
                               args.port)
    rounds = iter(range(10**6))

    def ask() -> dict:
        # raw prompts that differ from their first token: no answer finds another's blocks in the
        # prefix cache, so the two answers of a round do the same work
        return {"model": name, "prompt": f"{next(rounds)} Name a colour.", "raw": True, "stream": False,
                "options": {"num_predict": 1, "temperature": 0}}

    def timed(body) -> float:
        t = time.perf_counter()
        r = httpx.post(url + "/api/generate", json=body, timeout=900)
        assert r.status_code == 200, r.text
        return time.perf_counter() - t, r.json()

    def unload():
        httpx.post(url + "/api/generate", json={"model": name, "keep_alive": 0}, timeout=300)
        while name in {m["name"] for m in httpx.get(url + "/api/ps").json()["models"]}:
            time.sleep(0.05)

    try:
        loads = {"cold": [], "warm": []}
        firsts = {"cold": [], "warm": []}  # first answer on demand, less the same answer once loaded
        held = []
        for _ in range(args.repeats):
            for kind in ("cold", "warm"):
                if kind == "cold" and not drop_page_cache():
                    continue
                took, answer = timed({"model": name})
                assert answer["done_reason"] == "load", answer
                loads[kind].append(took)
                held.append(next(m["size"] for m in httpx.get(url + "/api/ps").json()["models"]
                                 if m["name"] == name))
                unload()
                if kind == "cold":
                    drop_page_cache()
                on_demand, answer = timed(ask())
                assert answer["load_duration"] > 0, answer
                loaded, answer = timed(ask())
                assert answer["load_duration"] == 0, answer
                firsts[kind].append(on_demand - loaded)
                unload()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    def row(label, reads, loaded, what):
        if not reads or not loaded:
            print(f"{label:5s}  (not measured: dropping the page cache needs root)")
            return
        r, ld = statistics.median(reads), statistics.median(loaded)
        print(f"{label:5s}  read {r:5.2f} s ({size / r / 1e9:5.2f} GB/s)   {what} {ld:5.2f} s = {ld / r:4.2f}x read"
              f"   ({', '.join(f'{x:.2f}' for x in loaded)})")
    print(f"medians of {args.repeats}; memory the loaded model held (RSS, as /api/ps): "
          f"{statistics.median(held) / 2**20:.0f} MiB (KV cache {args.kv_cache_memory_gib} GiB)")
    for kind, reads in (("cold", reads_cold), ("warm", reads_warm)):
        row(kind, reads, loads[kind], "load (empty request)")
        row(kind, reads, firsts[kind], "first answer, added")
    return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
