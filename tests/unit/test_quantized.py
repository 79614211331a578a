"""int8 weights: each backend against its pure-PyTorch reference, batch invariance, and the
module swap."""
import pytest
import torch

from tokenmill import SamplingParams
from tokenmill.model.layers import quantized
from tokenmill.model.layers.linear import Linear, MergedLinear
from tokenmill.model.layers.quantized import (GEMM_MIN_ROWS, Int8Embedding, Int8Linear,
                                              reference_int8_linear, reference_w8a8_linear)

needs_native = pytest.mark.usefixtures("portable_kernels")  # VNNI, or the portable C++ paths
needs_fbgemm = pytest.mark.skipif(not quantized._fbgemm_available(), reason="no fbgemm")


def layer(inp=576, out=1536, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = Linear(inp, out, bias=bias)
    lin.weight.data.normal_(0, 0.05)
    if bias:
        lin.bias.data.normal_(0, 0.1)
    return lin


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_int8_weights_are_per_channel_symmetric():
    lin = layer()
    q = Int8Linear(lin.weight, lin.bias, backend="reference")
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() == 127
    deq = q.qweight.float() * q.scale[:, None]
    assert rel_err(deq, lin.weight) < 0.01


@needs_native
@pytest.mark.parametrize("shape", [(576, 1536), (1536, 576), (577, 1001), (70, 9)])  # K, N; odd tails
def test_native_equals_its_reference_bitwise(shape):
    inp, out = shape
    for bias in (True, False):
        lin = layer(inp, out, bias=bias)
        q = Int8Linear(lin.weight, lin.bias, backend="native")
        x = torch.randn(3 * GEMM_MIN_ROWS, inp)
        x[1] *= 40      # an outlier row
        x[2, 5] = 300   # an outlier channel
        x[4] = 0        # an all-zero row
        ref = reference_w8a8_linear(x, q.qweight, q.scale, q.bias)
        for rows in (1, 2, GEMM_MIN_ROWS - 1, GEMM_MIN_ROWS, len(x)):  # row loop and _int_mm
            assert torch.equal(q(x[:rows]), ref[:rows]), rows
        # two int8 parts per row: as close to fp32 as the int8 weights allow
        assert rel_err(q(x), reference_int8_linear(x, q.qweight, q.scale, q.bias)) < 1e-4
        assert rel_err(q(x), lin(x)) < 0.01


@needs_native
def test_native_rows_do_not_depend_on_the_batch():
    lin = layer()
    q = Int8Linear(lin.weight, lin.bias, backend="native")
    x = torch.randn(2 * GEMM_MIN_ROWS + 3, 576)
    x[4] *= 50
    batched = q(x)
    for i in range(len(x)):
        assert torch.equal(q(x[i:i + 1]), batched[i:i + 1])
    assert torch.equal(q(x[3:3 + GEMM_MIN_ROWS - 1]), batched[3:3 + GEMM_MIN_ROWS - 1])


@needs_fbgemm
def test_fbgemm_matches_reference_and_fp32():
    for bias in (True, False):
        lin = layer(bias=bias)
        x = torch.randn(16, 576)
        fast = Int8Linear(lin.weight, lin.bias, backend="fbgemm")
        ref = reference_int8_linear(x, fast.qweight, fast.scale, fast.bias)
        assert rel_err(fast(x), ref) < 0.03  # activations are 7 or 8 bits per token in fbgemm
        assert rel_err(ref, lin(x)) < 0.01   # weights alone: 8-bit per channel
        assert rel_err(fast(x), lin(x)) < 0.03


@needs_fbgemm
def test_fbgemm_rows_do_not_depend_on_the_batch():
    lin = layer()
    q = Int8Linear(lin.weight, lin.bias, backend="fbgemm")
    x = torch.randn(9, 576)
    x[4] *= 50  # an outlier row must not change the others' quantization
    batched = q(x)
    for i in range(9):
        assert torch.equal(q(x[i:i + 1]), batched[i:i + 1])


def test_quantize_model_swaps_every_linear(tiny_llama_dir):
    from tokenmill.config import EngineConfig
    from tokenmill.engine.model_runner import ModelRunner
    from tokenmill.model.loader import load_checkpoint
    runner = ModelRunner(EngineConfig(tiny_llama_dir, quantization="int8", kv_cache_memory_gib=0.001,
                                      show_progress=False), load_checkpoint(tiny_llama_dir))
    assert not any(isinstance(m, (Linear, MergedLinear)) for m in runner.model.modules())
    assert isinstance(runner.model.lm_head, Int8Linear)
    # embeddings come from int8 rows too (an untied model: their own table)
    assert isinstance(runner.model.embed_tokens, Int8Embedding)
    ids = torch.tensor([3, 7, 7, 100])
    table = runner.model.embed_tokens.table
    assert torch.equal(runner.model.embed_tokens(ids), table.qweight[ids].float() * table.scale[ids, None])


def test_int8_engine_is_batch_invariant(tiny_llama_dir):
    from tokenmill import LLM
    llm = LLM(tiny_llama_dir, quantization="int8", kv_cache_memory_gib=0.01, show_progress=False)
    p = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = ["short", "a somewhat longer prompt here", "x" * 50]
    alone = [llm.generate([q], p)[0].outputs[0].token_ids for q in prompts]
    together = [o.outputs[0].token_ids for o in llm.generate(prompts, p)]
    assert alone == together
