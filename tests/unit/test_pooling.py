"""Embedding requests in the engine: prefill only, pooled over the final hidden states; chunked
prefill, prefix caching and batching with generation change nothing."""
import torch

from tokenmill import LLM, SamplingParams


def _embed(llm, prompts, mode):
    outs = llm.generate(prompts, SamplingParams(max_tokens=1, pooling=mode))
    return [torch.tensor(o.outputs[0].embedding) for o in outs]


def _reference(model, ids, mode):
    with torch.no_grad():
        h = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    return {"mean": h.mean(0), "last": h[-1], "cls": h[0]}[mode]


def test_pooled_vectors_match_transformers_chunked_and_cached(tiny_llama_dir):
    from transformers import AutoModelForCausalLM
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    # 40-token steps: a 150-token prompt is prefilled in four chunks
    llm = LLM(tiny_llama_dir, quantization="none", kv_cache_memory_gib=0.01, max_num_batched_tokens=40,
              show_progress=False)
    prompts = [[256] + [33 + (i * 7 + j) % 90 for j in range(150)] for i in range(3)]
    for mode in ("mean", "last", "cls"):
        got = _embed(llm, prompts, mode)
        again = _embed(llm, prompts, mode)  # the same prompts again: full prefix-cache hits where allowed
        for ids, v, w in zip(prompts, got, again):
            r = _reference(ref, ids, mode)
            assert torch.allclose(v, r, atol=1e-4), mode
            assert torch.allclose(w, r, atol=1e-4), mode


def test_embedding_rides_along_with_generation(tiny_llm):
    eng = tiny_llm.engine
    gen = eng.add_request(prompt_token_ids=[256, 65, 66, 67], params=SamplingParams(max_tokens=20, ignore_eos=True))
    emb = eng.add_request(prompt_token_ids=[256, 70, 71, 72, 73], params=SamplingParams(max_tokens=1, pooling="mean"))
    done = {}
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
    assert len(done[gen].outputs[0].token_ids) == 20
    e = done[emb].outputs[0]
    assert e.token_ids == [] and e.finish_reason == "stop" and len(e.embedding) == eng.model_config.hidden_size
