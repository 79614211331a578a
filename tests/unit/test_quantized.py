"""int8 weights: the fbgemm kernel path against the pure-PyTorch reference, batch invariance,
and the module swap."""
import torch

from tokenmill import SamplingParams
from tokenmill.model.layers.linear import Linear, MergedLinear
from tokenmill.model.layers.quantized import Int8Linear, reference_int8_linear


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
    q = Int8Linear(lin.weight, lin.bias, use_fbgemm=False)
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() == 127
    deq = q.qweight.float() * q.scale[:, None]
    assert rel_err(deq, lin.weight) < 0.01


def test_fbgemm_matches_reference_and_fp32():
    for bias in (True, False):
        lin = layer(bias=bias)
        x = torch.randn(16, 576)
        fast = Int8Linear(lin.weight, lin.bias, use_fbgemm=True)
        assert fast.use_fbgemm
        ref = reference_int8_linear(x, fast.qweight, fast.scale, fast.bias)
        assert rel_err(fast(x), ref) < 0.03  # activations are 7 or 8 bits per token in fbgemm
        assert rel_err(ref, lin(x)) < 0.01   # weights alone: 8-bit per channel
        assert rel_err(fast(x), lin(x)) < 0.03


def test_fbgemm_rows_do_not_depend_on_the_batch():
    lin = layer()
    q = Int8Linear(lin.weight, lin.bias, use_fbgemm=True)
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


def test_int8_engine_is_batch_invariant(tiny_llama_dir):
    from tokenmill import LLM
    llm = LLM(tiny_llama_dir, quantization="int8", kv_cache_memory_gib=0.01, show_progress=False)
    p = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = ["short", "a somewhat longer prompt here", "x" * 50]
    alone = [llm.generate([q], p)[0].outputs[0].token_ids for q in prompts]
    together = [o.outputs[0].token_ids for o in llm.generate(prompts, p)]
    assert alone == together
