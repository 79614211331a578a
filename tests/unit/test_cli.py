"""The `tokenmill` console script, run as a user would (subprocess, tiny model)."""
import subprocess


def run(*args, stdin=""):
    return subprocess.run(["tokenmill", *args], input=stdin, capture_output=True, text=True, timeout=120)


def test_generate_prints_completion(tiny_llama_dir):
    r = run("generate", "hello", "--model", tiny_llama_dir, "--temperature", "0", "--max-tokens", "8",
            "--ignore-eos", "--kv-cache-memory-gib", "0.01")
    assert r.returncode == 0, r.stderr
    # what the offline API gives for the same request, printed as is
    from tokenmill import LLM, SamplingParams
    llm = LLM(tiny_llama_dir, kv_cache_memory_gib=0.01, show_progress=False)
    expected = llm.generate("hello", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0].outputs[0].text
    assert r.stdout == expected + "\n"


def test_generate_rejects_bad_flag_value(tiny_llama_dir):
    r = run("generate", "hello", "--model", tiny_llama_dir, "--top-p", "2")
    assert r.returncode == 2 and "top_p" in r.stderr


def test_missing_model_is_a_clear_error(tmp_path):
    r = run("generate", "hello", "--model", str(tmp_path / "nope.gguf"))
    assert r.returncode == 2 and "model not found" in r.stderr


def test_chat_keeps_conversation_and_resets(tiny_llama_dir):
    r = run("chat", "--model", tiny_llama_dir, "--max-tokens", "4", "--temperature", "0",
            "--kv-cache-memory-gib", "0.01", stdin="hi\nagain\n/reset\nhi\n/quit\nnever read\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "(conversation cleared)" in lines
    before, after = r.stdout.split("(conversation cleared)")
    # after /reset the same first message gets the same greedy answer as at the start
    assert before.splitlines()[0] == after.strip("\n").splitlines()[0]
