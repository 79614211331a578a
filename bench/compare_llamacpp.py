"""Side by side: llama.cpp's llama-server and tokenmill on the same GGUF, the same threads, the
same load (tokenmill bench serve), in one run. Prints both tables and the ratios.

    python bench/compare_llamacpp.py [--concurrency 1 16] [--threads 2] [--output-len 128]
                                     [--quantization auto q4_1 ...]

Each --quantization gets its own tokenmill server (default: auto, the default format).
Decode tok/s is 1 / ITL p50.

llama-server comes from bench/build_llama_server.sh (built from the llama.cpp source that the
llama-cpp-python sdist vendors; cached outside the repo), or $LLAMA_SERVER.
"""
import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx

from tokenmill.benchmark.serve import print_table, run
from tokenmill.model.loader import default_model_path

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return time.time() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt-set", default="mixed")
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--slots", type=int, default=16, help="llama-server parallel slots")
    ap.add_argument("--ctx-per-slot", type=int, default=2048)
    ap.add_argument("--quantization", nargs="+", default=["auto"], help="tokenmill formats to run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    model = args.model or default_model_path()
    llama = os.environ.get("LLAMA_SERVER") or subprocess.run(
        [os.path.join(HERE, "build_llama_server.sh")], capture_output=True, text=True, check=True).stdout.strip()

    servers = {}
    try:
        lp = free_port()
        servers["llama-server"] = subprocess.Popen(
            [llama, "-m", model, "--host", "127.0.0.1", "--port", str(lp), "-t", str(args.threads),
             "-tb", str(args.threads), "-np", str(args.slots), "-c", str(args.slots * args.ctx_per_slot),
             "--cont-batching", "--log-disable"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ready = {}
        urls = {"llama-server": f"http://127.0.0.1:{lp}"}
        ready["llama-server"] = wait_ready(urls["llama-server"], servers["llama-server"])
        for q in args.quantization:  # one at a time: a start-up time is measured on an idle machine
            name = "tokenmill" if q == "auto" else f"tokenmill[{q}]"
            tp = free_port()
            servers[name] = subprocess.Popen(
                [sys.executable, "-m", "tokenmill.cli", "serve", "--model", model, "--port", str(tp),
                 "--num-threads", str(args.threads), "--quantization", q, "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            urls[name] = f"http://127.0.0.1:{tp}"
            ready[name] = wait_ready(urls[name], servers[name])
        results = {name: [] for name in servers}
        for c in args.concurrency:
            for name in servers:  # one after the other: each gets the whole machine
                n = max(2 * c, 8)
                r = asyncio.run(run(urls[name], c, n, args.prompt_set, args.output_len))
                results[name].append(r)
        for name in servers:
            print_table(results[name], f"\n{name} ({urls[name]}), ready in {ready[name]:.1f} s after start, "
                                       f"RSS {rss_mb(servers[name].pid):.0f} MB")
        for name in servers:
            if name == "llama-server":
                continue
            print(f"\n{name} / llama-server")
            print(f"{'conc':>4} {'out tok/s':>10} {'decode tok/s':>13} {'TTFT p50':>9} {'TTFT p95':>9}")
            for a, b in zip(results[name], results["llama-server"]):
                print(f"{a.concurrency:>4} {a.output_tok_per_s / b.output_tok_per_s:>9.2f}x "
                      f"{b.itl_p50 / a.itl_p50:>12.2f}x {a.ttft_p50 / b.ttft_p50:>8.2f}x "
                      f"{a.ttft_p95 / b.ttft_p95:>8.2f}x")
        out = {name: [r.__dict__ for r in rs] for name, rs in results.items()}
        print(json.dumps(out))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
    finally:
        for p in servers.values():
            p.terminate()
        for p in servers.values():
            p.wait(timeout=30)


if __name__ == "__main__":
    main()
