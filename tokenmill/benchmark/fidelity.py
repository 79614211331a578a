"""A GGUF file in its own blocks (--quantization gguf) against the same file dequantized to float32
(--quantization none), both with a float32 KV cache so only the weights' path differs: greedy
answers to chat prompts and perplexity on the bundled text (bench/requant_fidelity.py, tests)."""
from __future__ import annotations

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "What is 12 times 7?",
             "Name three colors.", "Who wrote Hamlet?", "Explain gravity in one sentence.",
             "What is a cat?", "Give me a synonym for happy.", "How many legs does a spider have?",
             "What is the boiling point of water?", "Tell me a fun fact.", "Translate 'hello' to Spanish."]


def against_float32(path: str, max_tokens: int, questions=QUESTIONS, context: int = 1024):
    """({"gguf": [token ids per question], "none": [...]}, {"gguf": perplexity, "none": ...})."""
    from .. import LLM, SamplingParams
    from .perplexity import DEFAULT_TEXT, perplexity
    text = open(DEFAULT_TEXT, encoding="utf-8").read()
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    answers, ppl = {}, {}
    for q in ("gguf", "none"):
        llm = LLM(path, quantization=q, kv_cache_dtype="float32", show_progress=False)
        outs = llm.chat([[{"role": "user", "content": x}] for x in questions], params)
        answers[q] = [o.outputs[0].token_ids for o in outs]
        del llm
        ppl[q] = perplexity(path, text, q, context=context, kv_cache_dtype="float32")[0]
    return answers, ppl
