"""tokenmill estimate: shapes read exactly from a GGUF header and an HF directory, or assumed
(and said so) from a bare parameter count; memory and KV figures by hand."""
import subprocess
import sys

import pytest

from tokenmill.estimate import FORMATS, estimate, kv_bytes_per_token, load_shape, parse_count


def test_parse_count():
    assert parse_count("7B") == 7_000_000_000
    assert parse_count("135m") == 135_000_000
    assert parse_count("1.5B") == 1_500_000_000
    with pytest.raises(ValueError):
        parse_count("seven")


def test_gguf_shape_is_read_exactly(smollm2_path):
    s = load_shape(smollm2_path, None)
    assert (s.layers, s.hidden, s.heads, s.kv_heads, s.head_dim, s.vocab) == (30, 576, 9, 3, 64, 49152)
    assert not s.assumed and 130e6 < s.params < 140e6
    assert kv_bytes_per_token(s) == 2 * 30 * 3 * 64 * 2  # K and V, float16


def test_hf_dir_shape(tiny_llama_dir):
    import json
    import os
    cfg = json.load(open(os.path.join(tiny_llama_dir, "config.json")))
    s = load_shape(tiny_llama_dir, None)
    assert s.layers == cfg["num_hidden_layers"] and s.kv_heads == cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    assert not s.assumed


def test_bare_count_assumes_a_typical_shape_and_says_so():
    s = load_shape(None, "8B")
    assert s.assumed and s.layers == 32 and s.kv_heads == 8 and s.params == 8_000_000_000
    e = estimate(s, context=4096, concurrency=2, bandwidth=50e9)
    assert e["kv_bytes_total"] == kv_bytes_per_token(s) * 4096 * 2
    rows = {r["format"]: r for r in e["formats"]}
    assert rows["bf16"]["weights_bytes"] == 16_000_000_000
    assert rows["q4"]["weights_bytes"] == int(8e9 * FORMATS["q4"])
    one = rows["bf16"]["decode_tok_s_one_stream"]
    assert abs(one - 50e9 / (16e9 + kv_bytes_per_token(s) * 4096)) < 1e-6


def test_cli_table():
    out = subprocess.run([sys.executable, "-m", "tokenmill.cli", "estimate", "--params", "70B", "--no-measure"],
                         capture_output=True, text=True, check=True).stdout
    assert "ASSUMED" in out and "Llama-3.1-70B" in out and "q4" in out


def test_gguf_as_stored_and_kv_formats(smollm2_path):
    """A GGUF file's own blocks (what --quantization gguf keeps) and each KV format's bytes."""
    import os
    s = load_shape(smollm2_path, None)
    assert 0.9 * os.path.getsize(smollm2_path) < s.stored_bytes < os.path.getsize(smollm2_path)
    assert "Q4_1" in s.stored_types and "Q8_0" in s.stored_types
    e = estimate(s, context=2048, concurrency=2, bandwidth=None)
    rows = {r["format"]: r for r in e["formats"]}
    assert rows["as stored"]["weights_bytes"] == s.stored_bytes
    assert rows["Q4_K"]["weights_bytes"] == int(s.params * 144 / 256)
    kv = {k["format"]: k for k in e["kv_formats"]}
    assert kv["int8"]["bytes_per_token"] == 2 * 30 * 3 * (64 + 4)  # int8 rows with a float32 scale
    assert kv["float32"]["bytes_total"] == 2 * 30 * 3 * 64 * 4 * 2048 * 2
    loaded = {x["kv_format"]: x["rss_bytes"] for x in e["rss_after_load"]["by_kv_format"]}
    runtime = e["rss_after_load"]["runtime_bytes"]
    assert loaded["int8"] == s.stored_bytes + kv["int8"]["bytes_total"] + runtime
