"""Prompt logprobs, the way lm-evaluation-harness scores loglikelihood: /v1/completions with
echo + logprobs + max_tokens 0 gives one logprob per prompt token (the first is null), equal
within 1e-3 to an fp32 forward pass of the same weights (Hugging Face transformers on the same
GGUF), and again on a repeat (prefix-cached positions still get theirs); vLLM's prompt_logprobs."""
import os

import httpx
import openai
import pytest
import torch

from server_process import Server

TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Rome is " \
       "the capital of Italy; both are old cities with many museums."


@pytest.fixture(scope="module")
def fp32_server(tmp_path_factory):
    s = Server(["--quantization", "none"], str(tmp_path_factory.mktemp("logs") / "fp32.log"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reference(smollm2_path):
    """Per prompt token (after the first): log p(token | tokens before), fp32 transformers."""
    from transformers import AutoModelForCausalLM
    from tokenmill.model.loader import load_checkpoint
    tok = load_checkpoint(smollm2_path).tokenizer()
    ids = tok.encode(TEXT)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(smollm2_path),
                                                 gguf_file=os.path.basename(smollm2_path),
                                                 dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    lp = logits.log_softmax(-1)
    return ids, [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]


def test_echo_logprobs_with_max_tokens_zero(fp32_server, reference):
    ids, ref = reference
    c = openai.OpenAI(base_url=fp32_server.url + "/v1", api_key="x", max_retries=0)
    r = c.completions.create(model=fp32_server.model, prompt=TEXT, max_tokens=0, echo=True, logprobs=1)
    ch = r.choices[0]
    assert ch.text == TEXT and r.usage.completion_tokens == 0 and ch.finish_reason == "length"
    got = ch.logprobs.token_logprobs
    assert len(got) == len(ids) and got[0] is None
    assert max(abs(a - b) for a, b in zip(got[1:], ref)) < 1e-3
    assert len(ch.logprobs.tokens) == len(ids)


def test_echo_with_generation_and_vllm_prompt_logprobs(fp32_server, reference):
    ids, ref = reference
    r = httpx.post(fp32_server.url + "/v1/completions", timeout=120, json={
        "model": fp32_server.model, "prompt": TEXT, "max_tokens": 4, "echo": True, "logprobs": 0,
        "prompt_logprobs": 2, "temperature": 0}).json()
    ch = r["choices"][0]
    assert ch["text"].startswith(TEXT) and len(ch["logprobs"]["token_logprobs"]) == len(ids) + 4
    plp = ch["prompt_logprobs"]
    assert plp[0] is None and len(plp) == len(ids)
    for i, entry in enumerate(plp[1:]):
        assert abs(entry[str(ids[i + 1])]["logprob"] - ref[i]) < 1e-3
    chat = httpx.post(fp32_server.url + "/v1/chat/completions", timeout=120, json={
        "model": fp32_server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "prompt_logprobs": 0}).json()
    assert chat["prompt_logprobs"][0] is None and len(chat["prompt_logprobs"]) == chat["usage"]["prompt_tokens"]
    bad = httpx.post(fp32_server.url + "/v1/completions", timeout=60, json={
        "model": fp32_server.model, "prompt": TEXT, "max_tokens": 0})
    assert bad.status_code == 400 and "echo" in bad.json()["error"]["message"]
