"""`compare_llamacpp.py --shape 1b|3b|8b`: tokenmill against llama.cpp on the GGUF files people run,
at real sizes, in one run on this machine.

The files: random weights in llama.cpp's Q4_K_M layout at Llama-3.2-1B / 3B and Llama-3.1-8B
shapes (tokenmill/model/loader/gguf_random.py; the bundled SmolLM2's vocabulary), written once
into ~/.cache/tokenmill/shapes. Rows:
  peaks     this machine's memory read bandwidth (a 1 GiB sum) and matrix peak: the better of torch's
            int8 GEMM (oneDNN, fast where VNNI runs) and fp32 GEMM (MKL), 512 x 4096 x 4096, both with
            the engine's thread count
  offline   llama-bench pp512 / tg128 (its default and -fa on; the better counts) against tokenmill's
            engine stepped directly (greedy, no speculation, no prefix cache); decode also as a share
            of the bandwidth (bytes of every matrix a token reads, plus its KV cache, times tok/s),
            prefill as GOP/s (2 x the matrices' weights per token) and a share of that peak
  memory    RSS after load, llama-server and tokenmill serve with the same KV capacity in tokens
            (each one's default KV format, and both float16); tokenmill's peak RSS while loading
            (sampled every 50 ms) and its time to ready, against reading the file from a cold page
            cache (root only: drop_caches)
  server    (with --shape-server) mixed prompts, 128 forced tokens, c = 16: llama-server -np 16
            -c 32768 against tokenmill serve
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "tokenmill", "shapes")


def model_file(shape: str, file_type: str = "Q4_K_M") -> str:
    from tokenmill.model.loader.gguf_random import SHAPES, write_random_gguf
    path = os.path.join(CACHE, f"llama-{shape}-{file_type.lower()}.gguf")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        print(f"writing {path} ...", flush=True)
        write_random_gguf(path + ".part", SHAPES[shape], file_type, name=f"llama-{shape}-shape")
        os.replace(path + ".part", path)
    return path


def matrix_bytes(path: str) -> tuple[int, int]:
    """(bytes of the matrices one decode step reads, weights in them): every layer matrix and the
    output layer (the tied embeddings, read whole by the output layer), not the embedding lookup."""
    from tokenmill.model.loader.gguf_header import read_header
    _, tensors, buf = read_header(path)
    buf.close()
    names = {t.name for t in tensors}
    tied = "output.weight" not in names
    read = [t for t in tensors if len(t.shape) == 2 and (t.name != "token_embd.weight" or tied)]
    return sum(t.nbytes for t in read), sum(int(t.shape[0]) * int(t.shape[1]) for t in read)


def measure_peaks(threads: int) -> dict:
    import torch
    from tokenmill.estimate import measure_bandwidth
    torch.set_num_threads(threads)
    bw = measure_bandwidth(mib=1024, repeats=5)
    peaks = {}
    for kind, dtype in (("int8", torch.int8), ("fp32", torch.float32)):
        # torch's int8 GEMM (oneDNN) where the CPU has VNNI; without it torch falls back to a slow
        # loop, and the fp32 GEMM (MKL) is the machine's matrix peak
        a = torch.randint(-127, 127, (512, 4096)).to(dtype)
        b = torch.randint(-127, 127, (4096, 4096)).to(dtype)
        mm = torch._int_mm if dtype == torch.int8 else torch.mm
        mm(a, b)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            mm(a, b)
            best = min(best, time.perf_counter() - t)
        peaks[kind] = 2 * 512 * 4096 * 4096 / best / 1e9
    kind = max(peaks, key=peaks.get)
    return {"bandwidth_gb_s": bw / 1e9, "matrix_peak_gop_s": peaks[kind], "matrix_peak_kind": kind,
            "int8_gop_s": peaks["int8"], "fp32_gflop_s": peaks["fp32"]}


def drop_page_cache() -> bool:
    """Drop the page cache (root only); whether it was dropped."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def cold_read_s(path: str, cold: bool = True) -> float | None:
    """Seconds to read the file after dropping the page cache (None where that is not allowed);
    cold=False: as it is (a warm read, once the file is in the page cache)."""
    if cold and not drop_page_cache():
        return None
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(64 << 20)
        while f.readinto(buf):
            pass
    return time.perf_counter() - t


def sampled_ready(cmd: list[str], port: int) -> tuple[subprocess.Popen, float, float]:
    """Start a server; (process, seconds to /health 200, peak RSS MB sampled every 50 ms)."""
    from compare_llamacpp import rss_mb
    t0 = time.time()
    proc = subprocess.Popen(cmd + ["--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}")
        peak = max(peak, rss_mb(proc.pid))
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, time.time() - t0, max(peak, rss_mb(proc.pid))
        except httpx.HTTPError:
            pass
        if time.time() - t0 > 900:
            raise RuntimeError("server not ready after 900 s")
        time.sleep(0.05)


def run_shape(args, rows: list, out: dict, report) -> None:
    from compare_llamacpp import (Server, _timed, bench, free_port, kv_bytes_per_token, llama_bench,
                                  llama_server_cmd, rss_mb, tokenmill_cmd)
    model = model_file(args.shape)
    T = args.threads
    size_mb = os.path.getsize(model) / 2**20
    read_bytes, weights = matrix_bytes(model)
    peaks = measure_peaks(T)
    out["shape"] = {"model": model, "file_mb": size_mb, "decode_read_bytes": read_bytes, "peaks": peaks}
    print(f"{model}: {size_mb:.0f} MiB; a decode step reads {read_bytes / 2**20:.0f} MiB of matrices; "
          f"bandwidth {peaks['bandwidth_gb_s']:.1f} GB/s, matrix peak {peaks['matrix_peak_gop_s']:.0f} GOP/s "
          f"({peaks['matrix_peak_kind']}; int8 {peaks['int8_gop_s']:.0f}, fp32 {peaks['fp32_gflop_s']:.0f})", flush=True)
    reps = 2
    if "offline" in args.only:
        lb = {"default": llama_bench(model, T, ["-p", "512", "-n", "128"]),
              "-fa on": llama_bench(model, T, ["-p", "512", "-n", "128", "-fa", "on"])}
        from tokenmill import LLM
        llm = LLM(model, num_threads=T, enable_prefix_caching=False, max_model_len=2048, show_progress=False,
                  kv_cache_memory_gib=0.25)
        base = 1000
        _timed(llm, list(range(base, base + 32)), 4)  # warm-up
        tg = [_timed(llm, [1] + list(range(base + r, base + r + 4)), 129) for r in range(reps)]
        pp = [_timed(llm, list(range(base + 7 + r, base + 7 + r + 512)), 1)[0] for r in range(reps)]
        tm = {"tg128": sum(n / dt for _, dt, n in tg) / reps, "pp512": sum(512 / t for t in pp) / reps,
              "weights": llm.engine.weights["summary"]}
        kv_token = kv_bytes_per_token(model, "int8")
        del llm
        out["llama-bench"] = {k: {str(kk): v for kk, v in d.items()} for k, d in lb.items()}
        out["tokenmill offline"] = tm
        (tgv, tgc), (ppv, ppc) = (max((lb[c][key], c) for c in lb) for key in ((0, 128, 0), (512, 0, 0)))
        rows.append((f"{args.shape} decode tg128 (tok/s)", tgv, tgc, tm["tg128"], True))
        rows.append((f"{args.shape} prefill pp512 (tok/s)", ppv, ppc, tm["pp512"], True))
        # a step at ~66 tokens of context reads the matrices and that much int8 KV
        share = (read_bytes + 66 * kv_token) * tm["tg128"] / 1e9 / peaks["bandwidth_gb_s"]
        llama_share = (read_bytes + 66 * kv_token / 0.53) * tgv / 1e9 / peaks["bandwidth_gb_s"]
        rows.append((f"{args.shape} decode, share of measured bandwidth (%)", 100 * llama_share, tgc, 100 * share, True))
        gop = 2 * weights * tm["pp512"] / 1e9
        rows.append((f"{args.shape} prefill GOP/s (2 x matrix weights x tok/s)", 2 * weights * ppv / 1e9, ppc, gop, True))
        peak, kind = peaks["matrix_peak_gop_s"], peaks["matrix_peak_kind"]
        rows.append((f"{args.shape} prefill, share of the {kind} matrix peak (%)", 100 * 2 * weights * ppv / 1e9 / peak,
                     ppc, 100 * gop / peak, True))
        report()
    if "memory" in args.only:
        ctx = args.ctx
        kv_gib = ctx * kv_bytes_per_token(model, "int8") / 2**30
        f16_gib = ctx * kv_bytes_per_token(model, "float16") / 2**30
        mem = {"cold_read_s": cold_read_s(model)}
        port = free_port()
        proc, ready, peak = sampled_ready(tokenmill_cmd(model, T, kv_gib), port)
        mem["tokenmill"] = {"ready_s": ready, "peak_rss_mb": peak, "rss_after_load_mb": rss_mb(proc.pid)}
        proc.terminate()
        proc.wait()
        s = Server(tokenmill_cmd(model, T, f16_gib, kv_dtype="float16"))
        mem["tokenmill float16 KV"] = {"rss_after_load_mb": s.rss()}
        s.close()
        s = Server(llama_server_cmd(model, T, 1, ctx))
        mem["llama-server"] = {"ready_s": s.ready_s, "rss_after_load_mb": s.rss()}
        s.close()
        out["memory"] = mem
        a, b = mem["llama-server"]["rss_after_load_mb"], mem["tokenmill"]["rss_after_load_mb"]
        rows.append((f"{args.shape} RSS after load (MB), {ctx} tokens of KV, each one's default", a, "f16 KV", b, False))
        rows.append((f"{args.shape} RSS after load (MB), both float16 KV", a, "f16 KV",
                     mem["tokenmill float16 KV"]["rss_after_load_mb"], False))
        rows.append((f"{args.shape} tokenmill peak RSS while loading, minus its KV (MB), vs file + 1536", size_mb + 1536,
                     "file + 1.5 GiB", peak - kv_gib * 1024, False))
        if mem["cold_read_s"]:
            rows.append((f"{args.shape} time to ready (s) vs 2 x cold read of the file", 2 * mem["cold_read_s"],
                         "2 x read", ready, False))
        rows.append((f"{args.shape} time to ready (s), llama-server vs tokenmill", mem["llama-server"]["ready_s"],
                     "llama-server", ready, False))
        report()
    if args.shape_server:
        c = 16
        s = Server(llama_server_cmd(model, T, c, c * 2048))
        try:
            a = bench(s.url, c, "mixed")
        finally:
            s.close()
        s = Server(tokenmill_cmd(model, T, c * 2048 * kv_bytes_per_token(model, "int8") / 2**30))
        try:
            b = bench(s.url, c, "mixed")
        finally:
            s.close()
        out["server c=16"] = {"llama-server": a.__dict__, "tokenmill": b.__dict__}
        rows.append((f"{args.shape} server c=16, mixed, output tok/s", a.output_tok_per_s, f"-np {c}", b.output_tok_per_s, True))
        rows.append((f"{args.shape} server c=16, TTFT p95 (s)", a.ttft_p95, f"-np {c}", b.ttft_p95, False))
        report()


if __name__ == "__main__":
    sys.exit("run it as: python bench/compare_llamacpp.py --shape 1b|3b|8b")
