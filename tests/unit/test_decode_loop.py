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
    runs = []
    for use_loop in (True, False):
        if not use_loop:
            model._plan = None  # from here on the Python layers
        runs.append([(c.token_ids, c.logprobs, o.prompt_logprobs) for p in params
                     for o in llm.generate(prompts, p) + llm.generate(prompts[:1], p) for c in o.outputs])
        if use_loop:
            assert model._plan is not None  # decode steps went through the C++ loop
    assert runs[0] == runs[1]
