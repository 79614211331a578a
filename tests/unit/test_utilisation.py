"""The work counter behind the benchmarks' GFLOP/s and GB/s: exact counts for a known run."""
import pytest

from tokenmill import LLM, SamplingParams
from tokenmill.benchmark.utilisation import model_sizes, utilisation


def test_work_counter_counts_one_request_exactly(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, kv_cache_memory_gib=0.01, enable_prefix_caching=False, show_progress=False)
    runner = llm.engine.runner
    prompt = list(range(10, 30))  # L = 20 tokens, one prefill step
    L, k = len(prompt), 5
    before = runner.work.snapshot()
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=k, ignore_eos=True))
    work = {key: v - before[key] for key, v in runner.work.snapshot().items()}
    # the prompt in one step, then one step per generated token but the last
    assert work == {"steps": k, "tokens": L + k - 1, "logit_rows": k,
                    "context_reads": L + sum(L + i for i in range(1, k)),
                    "attn_pairs": L * (L + 1) // 2 + sum(L + i for i in range(1, k))}
    sizes = model_sizes(runner)
    # the tiny llama (tests/tiny_models.py), counted by hand: hidden 64, MLP 128, 2 layers,
    # 4 heads and 2 KV heads of 16, vocabulary 260
    per_layer = 64 * 64 + 2 * (64 * 32) + 64 * 64 + 3 * (64 * 128)  # q, k+v, o, gate+up+down
    assert sizes["body_params"] == 2 * per_layer == 73728
    assert sizes["head_params"] == 260 * 64
    assert sizes["attn_flops_per_pair"] == 4 * 2 * 4 * 16  # QK^T and PV, 2 flops each, per head and layer
    use = utilisation(runner, work, 1.0, {"fp32_gflops": 100.0, "read_gbps": 10.0})
    expected_flops = (2 * 73728 * (L + k - 1) + 2 * 260 * 64 * k + 512 * work["attn_pairs"])
    assert use["gflops"] == expected_flops / 1e9
    assert use["gflops_pct"] == pytest.approx(expected_flops / 1e9)  # of a 100 GFLOP/s peak
    expected_bytes = sizes["weight_bytes"] * k + sizes["kv_bytes_per_token"] * work["context_reads"]
    assert use["gbps"] == expected_bytes / 1e9
    assert use["gbps_pct"] == pytest.approx(10 * expected_bytes / 1e9)  # of a 10 GB/s peak
