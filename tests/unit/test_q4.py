"""q4_1: 4-bit GGUF blocks kept as they are in the file, the kernel against a weight-only
reference, batch invariance, and the engine on a tiny Q4_1 GGUF."""
import pytest
import torch
import torch.nn.functional as F

from tokenmill import LLM, SamplingParams
from tokenmill.model.layers.linear import Linear
from tokenmill.model.layers.native import kernels
from tokenmill.model.layers.q4 import (Q4Linear, codes_from_blocks, pack_nibbles, reference_q4_linear,
                                      unpack_nibbles)
from tokenmill.model.layers.quantized import Int8Linear

needs_kernel = pytest.mark.usefixtures("portable_kernels")  # VNNI, or the portable C++ paths


def random_layer(N, K, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (N, K), generator=g, dtype=torch.uint8)
    d = (torch.rand(N, K // 32, generator=g) * 0.02).half()
    m = (-torch.rand(N, K // 32, generator=g) * 0.15).half()
    b = torch.randn(N, generator=g) if bias else None
    return codes, d, m, b


def test_nibbles_round_trip_in_gguf_order():
    codes = torch.randint(0, 16, (3, 64), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.shape == (3, 32)
    assert packed[0, 0] == codes[0, 0] | (codes[0, 16] << 4)  # byte j: q_j, q_{j+16}
    assert torch.equal(unpack_nibbles(packed), codes)


def test_codes_are_recovered_exactly_or_refused():
    codes, d, m, _ = random_layer(5, 128)
    w = (codes.float().view(5, 4, 32) * d.float()[..., None] + m.float()[..., None]).view(5, 128)
    assert torch.equal(codes_from_blocks(w, d, m), codes)
    assert codes_from_blocks(w + 0.003, d, m) is None  # off the grid: not Q4_1


@needs_kernel
@pytest.mark.parametrize("shape", [(77, 128), (1536, 576), (576, 1536), (48, 96)])  # N, K
def test_kernel_matches_its_reference_and_is_batch_invariant(shape):
    N, K = shape
    codes, d, m, b = random_layer(N, K)
    fast = Q4Linear(codes, d, m, b, kernels())
    ref = Q4Linear(codes, d, m, b, None)
    back = fast.blocks()  # the packed records give the file's blocks back
    assert torch.equal(back[0], codes) and torch.equal(back[1], d) and torch.equal(back[2], m)
    x = torch.randn(13, K)
    x[2] *= 30
    x[4, :32] = 0  # an all-zero block
    y = fast(x)
    same_math = reference_q4_linear(x, codes, d, m, b)  # int8 activations per block, float64
    assert ((y - same_math).norm() / same_math.norm()).item() < 1e-6
    exact = F.linear(x.double(), ref.dequantize().double(), b.double()).float()
    assert 1e-6 < ((y - exact).norm() / exact.norm()).item() < 2e-2  # 8-bit activations
    assert torch.allclose(ref(x), exact, rtol=1e-4, atol=1e-4)
    for i in range(len(x)):
        assert torch.equal(fast(x[i:i + 1]), y[i:i + 1])
    assert torch.equal(fast(x[3:9]), y[3:9])
    assert torch.equal(fast(x[1:4]), y[1:4])


def test_engine_keeps_a_q4_1_files_blocks(tmp_path):  # kernel or PyTorch reference
    from tests.tiny_models import make_hf_model, save_gguf
    path = save_gguf(make_hf_model("llama", seed=3), str(tmp_path / "tiny-q4_1.gguf"), "Q4_1")
    ref = LLM(path, quantization="none", kv_cache_memory_gib=0.01, show_progress=False)
    llm = LLM(path, quantization="q4_1", kv_cache_memory_gib=0.01, show_progress=False)
    model, fp32 = llm.engine.runner.model, dict(ref.engine.runner.model.named_parameters())
    q4 = {n: mod for n, mod in model.named_modules() if isinstance(mod, Q4Linear)}
    linears = {n for n, mod in ref.engine.runner.model.named_modules() if isinstance(mod, Linear)}
    assert len(linears) == 4 * model.config.num_layers + 1 and set(q4) == linears  # + lm_head
    assert isinstance(model.embed_tokens.table, Int8Linear)  # embeddings: int8 rows
    for name, mod in q4.items():
        assert torch.equal(mod.dequantize(), fp32[name + ".weight"])  # the file's weights, exactly
    p = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompts = ["hello", "a longer prompt than that one", "x" * 40]
    alone = [llm.generate([q], p)[0].outputs[0].token_ids for q in prompts]
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, p)] == alone


def test_layers_not_from_q4_1_blocks_take_int8(tmp_path):
    from tests.tiny_models import make_hf_model, save_gguf
    path = save_gguf(make_hf_model("llama", seed=4), str(tmp_path / "tiny-q8_0.gguf"), "Q8_0")
    llm = LLM(path, quantization="q4_1", kv_cache_memory_gib=0.01, show_progress=False)
    mods = list(llm.engine.runner.model.modules())
    assert not any(isinstance(m, Q4Linear) for m in mods)  # nothing requantized to 4 bits
    assert sum(isinstance(m, Int8Linear) for m in mods) == 4 * llm.engine.runner.model_config.num_layers + 2
