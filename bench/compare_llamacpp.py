"""tokenmill against llama.cpp on this machine, every scenario of the performance issue in one
run, one after the other, the same GGUF and thread count; prints one table with ratios.

    python bench/compare_llamacpp.py [--threads 2] [--only offline server grounded]
                                     [--concurrency 1 4 16 64] [--json out.json]
    python bench/compare_llamacpp.py --shape 1b|3b|8b [--only offline memory] [--shape-server]

--shape: the real-size rows on random-weight Q4_K_M files (bench/shapes.py says which); the rows
below are those of the bundled 135M model.

Rows (llama.cpp's best configuration for each, both listed):
  offline   decode tg128, prefill pp512, decode at 4,096 tokens of context: llama-bench on the
            Q4_1 file and on a Q8_0 copy (llama-quantize --allow-requantize), default settings and
            -fa on -ctk q8_0 -ctv q8_0; tokenmill's LLM on the engine directly (greedy, no
            speculation, no prefix cache; its default int8 KV cache, and the 4,096 row again with
            float16 KV), and the TTFT of an 8,191-token prompt; each row the mean tok/s of 3 runs
            on both sides (llama-bench -r 3)
  server    mixed prompts (37-706 tokens), 128 forced tokens, streaming, c = 1/4/16/64: llama-server
            started for each c with -np c and 2,048 tokens of context per slot (-c 2048 c; with
            --kv-unified every sequence's attention spans the whole shared cache, and c=64 starved), and
            one tokenmill serve whose KV cache holds --ctx tokens; output tok/s, TTFT p95; RSS
            after load and after the run (and minus each one's KV cache) at the same KV capacity
            in tokens: the llama-server whose -c equals --ctx (c=16 by default, f16 KV), tokenmill
            with its default int8 KV, and after load with float16 KV
  grounded  input-grounded edits (tokenmill/benchmark/prompts.py GROUNDED), c = 1, answers end where
            the model ends: llama-server plain and with each draft-free --spec-type, tokenmill with
            speculation off and on; and open-ended chat (the short set, natural ends), tokenmill
            speculation off and on, three interleaved runs each

llama.cpp binaries come from bench/build_llama_server.sh (cached outside the repo).
"""
import argparse
import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import time

import httpx

from tokenmill.benchmark.serve import run
from tokenmill.model.loader import default_model_path

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC_TYPES = ["ngram-simple", "ngram-map-k", "ngram-mod", "ngram-cache"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return time.time() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, cmd, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(cmd + ["--port", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env)
        self.ready_s = wait_ready(self.url, self.proc)

    def rss(self):
        return rss_mb(self.proc.pid)

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def llama_bin(name):
    server = os.environ.get("LLAMA_SERVER") or subprocess.run(
        [os.path.join(HERE, "build_llama_server.sh")], capture_output=True, text=True, check=True).stdout.strip()
    return os.path.join(os.path.dirname(server), name)


def q8_copy(model):
    out = os.path.join(os.path.expanduser("~/.cache/tokenmill"), os.path.basename(model).replace(".gguf", "") + "-Q8_0.gguf")
    if not os.path.exists(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)  # a fresh machine has no cache directory yet
        subprocess.run([llama_bin("llama-quantize"), "--allow-requantize", model, out, "Q8_0"],
                       check=True, capture_output=True)
    return out


REPS = 3  # repetitions of each offline row, both sides


def llama_bench(model, threads, args):
    cmd = [llama_bin("llama-bench"), "-m", model, "-t", str(threads), "-o", "json", "-r", str(REPS)] + args
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return {(r["n_prompt"], r["n_gen"], r.get("n_depth", 0)): r["avg_ts"] for r in json.loads(out)}


# ---- tokenmill offline: the engine stepped directly ---------------------------------------------
def _timed(llm, prompt_ids, max_tokens):
    """(seconds to the first token, seconds from the first token to the last, tokens after the first)"""
    from tokenmill import SamplingParams
    eng = llm.engine
    eng.add_request(prompt_token_ids=prompt_ids, params=SamplingParams(
        temperature=0, max_tokens=max_tokens, ignore_eos=True, speculative=False))
    t0 = time.perf_counter()
    first = last = None
    n = 0
    while eng.has_unfinished_requests():
        for o in eng.step():
            now = time.perf_counter()
            n = len(o.outputs[0].token_ids)
            if first is None and n:
                first = now
            last = now
    return first - t0, last - first, n - 1


def tokenmill_offline(model, threads):
    from tokenmill import LLM
    base = 1000  # ordinary text-token ids; each prompt distinct
    llm = LLM(model, num_threads=threads, enable_prefix_caching=False, max_model_len=8192,
              show_progress=False)
    res = {"kv_dtype": str(llm.engine.runner.kv_dtype)}
    _timed(llm, list(range(base, base + 64)), 8)  # warm-up
    # each row the mean tok/s of REPS runs, as llama-bench -r REPS reports its avg_ts
    tg = [_timed(llm, [1] + list(range(base + r, base + r + 4)), 129) for r in range(REPS)]
    res["tg128"] = sum(n / dt for _, dt, n in tg) / REPS
    pp = [_timed(llm, list(range(base + 7 + r, base + 7 + r + 512)), 1)[0] for r in range(REPS)]
    res["pp512"] = sum(512 / t for t in pp) / REPS
    long = [_timed(llm, [(base + r + i * 7) % 40000 + 100 for i in range(4096)], 65) for r in range(REPS)]
    res["tg_at_4096"] = sum(n / dt for _, dt, n in long) / REPS
    ttft, _, _ = _timed(llm, [(base + i * 13) % 40000 + 100 for i in range(8191)], 1)
    res["ttft_8191_s"] = ttft
    del llm
    gc.collect()
    # the same long-context decode with a float16 KV cache (llama.cpp's default format)
    llm = LLM(model, num_threads=threads, enable_prefix_caching=False, max_model_len=8192,
              show_progress=False, kv_cache_dtype="float16")
    _timed(llm, list(range(base, base + 64)), 8)
    long = [_timed(llm, [(base + r + i * 7) % 40000 + 100 for i in range(4096)], 65) for r in range(REPS)]
    res["tg_at_4096_fp16_kv"] = sum(n / dt for _, dt, n in long) / REPS
    del llm
    gc.collect()
    return res


# ---- servers ------------------------------------------------------------------------------------
def kv_bytes_per_token(model, kv_dtype):
    import torch
    from tokenmill.model.layers.attention import cache_row_bytes
    from tokenmill.model.loader import load_checkpoint
    cfg = load_checkpoint(model).config
    row = cache_row_bytes(getattr(torch, kv_dtype), cfg.head_dim)  # llama.cpp's f16 = float16
    return 2 * cfg.num_layers * cfg.num_kv_heads * row  # K and V


def llama_server_cmd(model, threads, slots, ctx, extra=()):
    return [llama_bin("llama-server"), "-m", model, "--host", "127.0.0.1", "-t", str(threads), "-tb",
            str(threads), "-np", str(slots), "-c", str(ctx), "--cont-batching",
            "--log-disable", *extra]


def tokenmill_cmd(model, threads, kv_gib, extra=(), kv_dtype="int8"):
    # int8 KV: the default on CPU with the C++ kernels; named here so that kv_gib fits it
    return [sys.executable, "-m", "tokenmill.cli", "serve", "--model", model, "--num-threads", str(threads),
            "--kv-cache-memory-gib", f"{kv_gib:.4f}", "--kv-cache-dtype", kv_dtype, "--log-level", "warning",
            *extra]


def bench(url, c, prompt_set, output_len=128, n=None, extra=None, forced=None):
    return asyncio.run(run(url, c, n or max(2 * c, 8), prompt_set, output_len, extra=extra, forced=forced))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", nargs="+", default=["offline", "server", "grounded"])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--ctx", type=int, default=32768, help="KV capacity (tokens) for the memory rows")
    ap.add_argument("--json", default=None)
    ap.add_argument("--shape", choices=["1b", "3b", "8b"], default=None,
                    help="random-weight Q4_K_M file at this real shape (bench/shapes.py)")
    ap.add_argument("--shape-server", action="store_true", help="with --shape: the c=16 server rows too")
    args = ap.parse_args()
    model = args.model or default_model_path()
    T = args.threads
    rows = []  # (scenario, llama.cpp value, its config, tokenmill value, higher is better)
    out = {}

    def report():
        print(f"\n{'scenario':<58} {'llama.cpp':>10} {'(config)':<22} {'tokenmill':>10} {'ratio':>7}")
        for name, a, cfg, b, higher in rows:
            ratio = (b / a if higher else a / b) if a == a and a and b else float("nan")
            print(f"{name:<58} {a:>10.2f} {cfg:<22} {b:>10.2f} {ratio:>6.2f}x")
        print("(ratio: tokenmill's advantage; > 1 is better for tokenmill, for times and memory too)", flush=True)
        out["rows"] = rows
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1, default=str)

    if args.shape:
        from shapes import run_shape
        if args.only == ap.get_default("only"):
            args.only = ["offline", "memory"]
        run_shape(args, rows, out, report)
        return

    if "offline" in args.only:
        q8 = q8_copy(model)
        lb = {}
        for name, path in (("Q4_1", model), ("Q8_0", q8)):
            lb[name] = llama_bench(path, T, ["-p", "512", "-n", "128"])
            lb[name + " 4096"] = llama_bench(path, T, ["-p", "0", "-n", "32", "-d", "4096"])
            lb[name + " 4096 fa q8kv"] = llama_bench(
                path, T, ["-p", "0", "-n", "32", "-d", "4096", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"])
        tm = tokenmill_offline(model, T)
        out["llama-bench"] = {k: {str(kk): v for kk, v in d.items()} for k, d in lb.items()}
        out["tokenmill offline"] = tm

        def best(key, configs):
            return max((lb[c][key], c) for c in configs)

        v, c = best((0, 128, 0), ["Q4_1", "Q8_0"])
        rows.append(("decode tg128 (tok/s)", v, c, tm["tg128"], True))
        v, c = best((512, 0, 0), ["Q4_1", "Q8_0"])
        rows.append(("prefill pp512 (tok/s)", v, c, tm["pp512"], True))
        v, c = best((0, 32, 4096), ["Q4_1 4096", "Q8_0 4096"])
        rows.append(("decode at 4096 ctx, llama.cpp defaults (tok/s)", v, c, tm["tg_at_4096"], True))
        v, c = best((0, 32, 4096), ["Q4_1 4096 fa q8kv", "Q8_0 4096 fa q8kv"])
        rows.append(("decode at 4096 ctx, llama.cpp -fa on q8_0 KV (tok/s)", v, c, tm["tg_at_4096"], True))
        v, c = best((0, 32, 4096), ["Q4_1 4096", "Q8_0 4096"])
        rows.append(("decode at 4096 ctx, both float16 KV (tok/s)", v, c, tm["tg_at_4096_fp16_kv"], True))
        rows.append(("TTFT of an 8,191-token prompt (s, tokenmill only)", float("nan"), "", tm["ttft_8191_s"], False))
        report()

    kv_gib = args.ctx * kv_bytes_per_token(model, "int8") / 2**30  # tokenmill's default
    llama_kv_gib = args.ctx * kv_bytes_per_token(model, "float16") / 2**30  # llama.cpp's f16
    if "server" in args.only:
        res = {"llama-server": [], "tokenmill": []}
        mem = {}
        for c in args.concurrency:  # llama-server: c slots of 2,048 tokens each, started anew
            s = Server(llama_server_cmd(model, T, c, c * 2048))
            try:
                if c * 2048 == args.ctx:
                    mem["llama-server"] = {"ready_s": s.ready_s, "rss_after_load_mb": s.rss()}
                res["llama-server"].append(bench(s.url, c, "mixed"))
                if c * 2048 == args.ctx:
                    mem["llama-server"]["rss_after_run_mb"] = s.rss()
            finally:
                s.close()
        s = Server(tokenmill_cmd(model, T, kv_gib))  # one server, a KV cache of args.ctx tokens
        try:
            mem["tokenmill"] = {"ready_s": s.ready_s, "rss_after_load_mb": s.rss()}
            res["tokenmill"] = [bench(s.url, c, "mixed") for c in args.concurrency]
            mem["tokenmill"]["rss_after_run_mb"] = s.rss()
        finally:
            s.close()
        s = Server(tokenmill_cmd(model, T, llama_kv_gib, kv_dtype="float16"))  # llama.cpp's KV format
        try:
            mem["tokenmill float16 KV"] = {"ready_s": s.ready_s, "rss_after_load_mb": s.rss()}
        finally:
            s.close()
        out["server"] = {k: [r.__dict__ for r in v] for k, v in res.items()}
        out["memory"] = mem
        for i, c in enumerate(args.concurrency):
            a, b = res["llama-server"][i], res["tokenmill"][i]
            rows.append((f"server c={c}, mixed, output tok/s", a.output_tok_per_s, f"Q4_1 -np {c}", b.output_tok_per_s, True))
            rows.append((f"server c={c}, TTFT p95 (s)", a.ttft_p95, f"Q4_1 -np {c}", b.ttft_p95, False))
        kv_mb, llama_kv_mb = kv_gib * 1024, llama_kv_gib * 1024
        if "llama-server" in mem:
            for key in ("rss_after_load_mb", "rss_after_run_mb"):
                what = key[4:-3].replace("_", " ")
                rows.append((f"RSS {what} (MB), KV of {args.ctx} tokens (f16 {llama_kv_mb:.0f} / int8 "
                             f"{kv_mb:.0f} MB)", mem["llama-server"][key], f"-c {args.ctx}", mem["tokenmill"][key], False))
                rows.append((f"RSS {what} minus each one's KV (MB)", mem["llama-server"][key] - llama_kv_mb,
                             f"-c {args.ctx}", mem["tokenmill"][key] - kv_mb, False))
            rows.append((f"RSS after load (MB), both float16 KV ({llama_kv_mb:.0f} MB)",
                         mem["llama-server"]["rss_after_load_mb"], f"-c {args.ctx}",
                         mem["tokenmill float16 KV"]["rss_after_load_mb"], False))
        report()

    if "grounded" in args.only:
        g = {}
        for spec in ["none"] + SPEC_TYPES:
            extra = [] if spec == "none" else ["--spec-type", spec]
            s = Server(llama_server_cmd(model, T, 1, 8192, extra))
            try:
                bench(s.url, 1, "grounded", 256, n=2)  # warm-up
                g[f"llama-server {spec}"] = bench(s.url, 1, "grounded", 256, n=12)
            finally:
                s.close()
        s = Server(tokenmill_cmd(model, T, 0.5))
        try:
            bench(s.url, 1, "grounded", 256, n=2)
            g["tokenmill spec off"] = bench(s.url, 1, "grounded", 256, n=12, extra={"speculative": False})
            g["tokenmill"] = bench(s.url, 1, "grounded", 256, n=12)
            chat = {"off": [], "on": []}
            for _ in range(3):  # open-ended chat, answers end where the model ends: interleaved
                chat["off"].append(bench(s.url, 1, "short", 256, n=8, extra={"speculative": False},
                                         forced=False).output_tok_per_s)
                chat["on"].append(bench(s.url, 1, "short", 256, n=8, forced=False).output_tok_per_s)
            metrics = httpx.get(s.url + "/metrics").text
        finally:
            s.close()
        out["grounded"] = {k: v.__dict__ for k, v in g.items()}
        out["chat_spec"] = chat
        spec_lines = [ln for ln in metrics.splitlines() if ln.startswith("tokenmill:spec_decode")]
        out["spec_metrics"] = spec_lines
        plain = g["llama-server none"].output_tok_per_s
        best_spec, best_name = max((g[f"llama-server {t}"].output_tok_per_s, t) for t in SPEC_TYPES)
        rows.append(("grounded c=1 output tok/s vs llama-server plain", plain, "Q4_1",
                     g["tokenmill"].output_tok_per_s, True))
        rows.append(("grounded c=1 output tok/s vs llama-server best --spec-type", best_spec, best_name,
                     g["tokenmill"].output_tok_per_s, True))
        rows.append(("grounded c=1, tokenmill speculation off (tok/s)", plain, "Q4_1",
                     g["tokenmill spec off"].output_tok_per_s, True))
        print("\ngrounded c=1 output tok/s: " + ", ".join(f"{k} {v.output_tok_per_s:.1f}" for k, v in g.items()))
        print("open-ended chat c=1 output tok/s, tokenmill speculation off: "
              + " ".join(f"{x:.1f}" for x in chat["off"]) + "; on: " + " ".join(f"{x:.1f}" for x in chat["on"]))
        print("\n".join(spec_lines))

        report()


if __name__ == "__main__":
    main()
