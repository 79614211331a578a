"""The C++ decode loop (csrc/decode_loop.cpp) makes the calls the Python layers make: the same
tokens and the same logprobs, bit for bit, alone, batched and with speculative drafts."""
import pytest

from tokenmill import LLM, SamplingParams
from tokenmill.model.layers.q4 import Q4Linear


# where the CPU lacks AVX-512 VNNI, the kernels' portable C++ paths (production would not pack
# the weights there, and the loop would not run)
@pytest.mark.usefixtures("portable_kernels")
@pytest.mark.parametrize("quantization,kv_cache_dtype", [("int8", "int8"), ("int8", "float16"),
                                                          ("q4_1", "int8"), ("q4_1", "float16"),
                                                          ("q4_1", "float32")])
def test_cpp_decode_loop_matches_the_python_layers(tiny_llama_dir, tmp_path, quantization, kv_cache_dtype):
    path = tiny_llama_dir
    if quantization == "q4_1":  # 4-bit records from a Q4_1 file
        from tests.tiny_models import make_hf_model, save_gguf
        path = save_gguf(make_hf_model("llama", seed=3), str(tmp_path / "tiny-q4_1.gguf"), "Q4_1")
    # 16-token steps: the long prompt's middle chunks have no row to read (their last layer stops
    # after its keys and values in the C++ loop)
    llm = LLM(path, quantization=quantization, kv_cache_dtype=kv_cache_dtype, max_num_batched_tokens=16,
              show_progress=False)
    model = llm.engine.runner.model
    if quantization == "q4_1":
        assert sum(isinstance(m, Q4Linear) for m in model.modules()) == 4 * len(model.layers) + 1
    prompts = ["hello", "abcabcabcabc", "the quick brown fox jumps", "over the lazy dog, " * 6]
    # prompt steps run the loop's last layer for the sampled rows only, or for every row with
    # prompt logprobs; the Python layers run every row
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=3),
              SamplingParams(temperature=0.8, seed=3, max_tokens=24, ignore_eos=True, logprobs=3),
              SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, prompt_logprobs=2)]
    runs = _loop_and_python_runs(llm, prompts, params, "LlamaLoop")
    assert runs[0] == runs[1]


def _loop_and_python_runs(llm, prompts, params, loop="FamilyLoop"):
    """Each prompt's answers (tokens, logprobs, prompt logprobs) through the C++ layer loop (of
    model/layer_loop.py's kind `loop`), then through the Python layers."""
    model = llm.engine.runner.model
    runs = []
    for use_loop in (True, False):
        if not use_loop:
            model._plan = None  # from here on the Python layers
        runs.append([(c.token_ids, c.logprobs, o.prompt_logprobs) for p in params
                     for o in llm.generate(prompts, p) + llm.generate(prompts[:1], p) for c in o.outputs])
        if use_loop:
            assert type(model._plan).__name__ == loop  # the steps went through that C++ loop
    return runs


# every family's switches (tests/model/test_families.py's shrunk real configs), but phi3's partial
# rotary, which stays in the Python layers
@pytest.mark.usefixtures("portable_kernels")
@pytest.mark.parametrize("arch,kv_cache_dtype", [("gemma3_text", "float16"), ("gemma3_text", "int8"),
                                                 ("gemma2", "float16"), ("qwen3", "int8"), ("olmo2", "float16"),
                                                 ("granite", "int8"), ("smollm3", "int8"), ("smollm3", "float16"),
                                                 ("mistral", "float32")])
def test_the_family_loop_matches_the_python_layers(tmp_path, arch, kv_cache_dtype):
    from tests.model.test_families import family_model
    from tiny_models import save_hf_dir
    path = save_hf_dir(family_model(arch, seed=5), str(tmp_path / arch))
    llm = LLM(path, quantization="int8", kv_cache_dtype=kv_cache_dtype, max_num_batched_tokens=16,
              kv_cache_memory_gib=0.01, block_size=4, max_num_seqs=2, show_progress=False)
    prompts = ["hello", "abcabcabcabc", "the quick brown fox jumps", "over the lazy dog, " * 3]
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=3),
              SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, prompt_logprobs=2)]
    runs = _loop_and_python_runs(llm, prompts, params)
    assert runs[0] == runs[1]


@pytest.mark.usefixtures("portable_kernels")
def test_the_family_loop_runs_a_files_own_blocks(tmp_path):
    # a llama file in Q4_K_M's layout (Q4_K and Q6_K parts, a fused q/k/v of three parts)
    from tokenmill.model.layers.gguf_linear import GGUFLinear
    from tokenmill.model.loader.gguf_random import write_random_gguf
    path = str(tmp_path / "tiny-q4_k_m.gguf")
    write_random_gguf(path, dict(hidden=256, layers=2, heads=4, kv_heads=2, ffn=512, tied=True, rope_factor=8.0,
                                 context=512),
                      "Q4_K_M", seed=2)
    llm = LLM(path, max_num_batched_tokens=16, kv_cache_memory_gib=0.01, show_progress=False)
    assert isinstance(llm.engine.runner.model.layers[0].self_attn.qkv_proj, GGUFLinear)
    prompts = [[1, 5, 9, 200, 17], [1] + list(range(40, 70)), [1, 2, 3]]
    params = [SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2),
              SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, prompt_logprobs=1)]
    runs = _loop_and_python_runs(llm, prompts, params)
    assert runs[0] == runs[1]
