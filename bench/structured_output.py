"""Structured output cost: output tok/s with and without a JSON-schema grammar, one run.

    python bench/structured_output.py [--concurrency 1 16] [--max-tokens 128] [--answers 50]

The same chat prompts and seeds (temperature 1), constrained to a 12-property schema or free;
both capped at --max-tokens; constrained with the plain mask and with token alignment
(engine/token_alignment.py). Also: compile time of new 10-20 property schemas (cold) and of a
repeat (cache hit); and, with --answers N, how many of N seeded answers per prompt to a City
schema (the SDK's `parse` test) end by themselves within 300 tokens, plain mask vs aligned.
"""
import argparse
import json
import time

from tokenmill import LLM, SamplingParams
from tokenmill.engine import structured
from tokenmill.engine.structured import GrammarSpec

MASK_TIME = {"s": 0.0, "calls": 0}
_mask = structured.GrammarProcessor.__call__


def _timed_mask(self, output_ids, row):
    t0 = time.perf_counter()
    try:
        return _mask(self, output_ids, row)
    finally:
        MASK_TIME["s"] += time.perf_counter() - t0
        MASK_TIME["calls"] += 1


structured.GrammarProcessor.__call__ = _timed_mask  # what the grammar costs a token, measured

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "country": {"type": "string"}, "population": {"type": "integer", "minimum": 0},
    "area_km2": {"type": "number"}, "capital": {"type": "boolean"}, "founded": {"type": "integer"},
    "continent": {"enum": ["Europe", "Asia", "Africa", "Americas", "Oceania"]},
    "mayor": {"type": "string"}, "rivers": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    "landmarks": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    "climate": {"type": "string"}, "motto": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
    "required": ["name", "country", "population", "continent", "landmarks"], "additionalProperties": False}
CITIES = ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Rome", "Quito", "Perth", "Delhi", "Lagos", "Bern", "Kyiv",
          "Seoul", "Hanoi", "Dakar", "Sofia"]


CITY = {"type": "object", "additionalProperties": False,
        "required": ["name", "country", "population", "continent", "landmarks"],
        "properties": {"name": {"type": "string"}, "country": {"type": "string"},
                       "population": {"type": "number", "minimum": 1000, "maximum": 50_000_000},
                       "continent": {"enum": ["Europe", "Asia", "Africa", "Americas", "Oceania"]},
                       "landmarks": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}}}
ASK = ["Describe Paris.", "Describe Tokyo.", "Describe Rome.", "Tell me about Cairo.",
       "What are the name, country, population, continent and three best-known landmarks of Paris?"]


def answers(llm, n: int, temperature: float) -> tuple[int, int, float]:
    """(answers cut by max_tokens 300, answers, mean output tokens) over ASK x seeds 0..n-1."""
    proc = llm.engine.structured.compile(GrammarSpec.json_schema(CITY))
    prompts, params = [], []
    for ask in ASK:
        for seed in range(n):
            prompts.append(llm.tokenizer.encode_chat([{"role": "user", "content": ask}]))
            params.append(SamplingParams(temperature=temperature, seed=seed, max_tokens=300,
                                         logits_processors=[proc.clone()]))
    outs = llm.generate(prompts, params)
    cut = sum(o.outputs[0].finish_reason == "length" for o in outs)
    return cut, len(outs), sum(len(o.outputs[0].token_ids) for o in outs) / len(outs)


def aligned(llm, on: bool) -> None:
    compiler = llm.engine.structured
    compiler.token_alignment = on
    compiler._cache.clear()  # processors made from here on follow the setting


def run(llm, n, constrained, max_tokens, rounds=1):
    """rounds x (n requests together): (tok/s, tokens, seconds)"""
    total, seconds = 0, 0.0
    for r in range(rounds):
        tok_s, tokens, dt = _round(llm, n, constrained, max_tokens, offset=r * n)
        total, seconds = total + tokens, seconds + dt
    return total / seconds, total, seconds


def _round(llm, n, constrained, max_tokens, offset):
    reqs = []
    for i in range(offset, offset + n):
        ids = llm.tokenizer.encode_chat([{"role": "user", "content": f"Describe {CITIES[i % len(CITIES)]} as JSON."}])
        procs = [llm.engine.structured.compile(GrammarSpec.json_schema(SCHEMA))] if constrained else []
        reqs.append((ids, SamplingParams(temperature=1.0, seed=i, max_tokens=max_tokens, logits_processors=procs)))
    t0 = time.perf_counter()
    outs = llm.generate([r[0] for r in reqs], [r[1] for r in reqs])
    dt = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return tokens / dt, tokens, dt


def schema_with(k: int, salt: int) -> dict:
    props = {f"field_{salt}_{j}": ({"type": "string"}, {"type": "integer", "minimum": 0}, {"type": "number"},
                                   {"type": "boolean"}, {"enum": ["a", "b", "c"]},
                                   {"type": "array", "items": {"type": "string"}, "maxItems": 4})[j % 6]
             for j in range(k)}
    return {"type": "object", "properties": props, "required": list(props)[:k // 2], "additionalProperties": False}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--answers", type=int, default=0, help="seeds per prompt for the City answers check")
    args = ap.parse_args()
    llm = LLM(args.model, show_progress=False)
    compiler = llm.engine.structured
    compiler.compile(GrammarSpec.json_schema({"type": "object"}))  # builds the tokenizer view once
    cold, warm = [], []
    for salt, k in enumerate((10, 12, 15, 18, 20)):
        spec = GrammarSpec.json_schema(schema_with(k, salt))
        t0 = time.perf_counter()
        compiler.compile(spec)
        cold.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        compiler.compile(spec)
        warm.append((time.perf_counter() - t0) * 1000)
    print(f"compile, new 10-20 property schemas: {', '.join(f'{x:.1f}' for x in cold)} ms; "
          f"repeat (cache hit): {max(warm):.2f} ms at most")
    run(llm, 2, True, 8)  # warm-up
    results = {}
    for c in args.concurrency:
        rounds = max(1, 8 // c)
        free = run(llm, c, False, args.max_tokens, rounds)
        aligned(llm, False)
        MASK_TIME.update(s=0.0, calls=0)
        plain = run(llm, c, True, args.max_tokens, rounds)
        plain_us = MASK_TIME["s"] / max(1, MASK_TIME["calls"]) * 1e6
        aligned(llm, True)
        MASK_TIME.update(s=0.0, calls=0)
        json_ = run(llm, c, True, args.max_tokens, rounds)
        aligned_us = MASK_TIME["s"] / max(1, MASK_TIME["calls"]) * 1e6
        results[c] = {"free_tok_s": free[0], "plain_mask_tok_s": plain[0], "json_tok_s": json_[0],
                      "ratio": json_[0] / free[0], "mask_us_per_row": {"plain": plain_us, "aligned": aligned_us}}
        print(f"c={c:>3}: free {free[0]:7.1f} tok/s ({free[1]} tokens), JSON schema plain mask {plain[0]:7.1f} "
              f"({plain[1]} tokens), aligned {json_[0]:7.1f} tok/s ({json_[1]} tokens): "
              f"{json_[0] / free[0]:.0%} of free; the mask costs {plain_us:.0f} us a row plain, "
              f"{aligned_us:.0f} us aligned")
    quality = {}
    for t in (1.0, 0.8) if args.answers else ():
        for on in (False, True):
            aligned(llm, on)
            cut, total, mean = answers(llm, args.answers, t)
            quality[f"T={t} {'aligned' if on else 'plain mask'}"] = {"cut": cut, "answers": total, "mean_tokens": mean}
            print(f"City answers, T={t}, {'aligned   ' if on else 'plain mask'}: {cut}/{total} cut by max_tokens 300, "
                  f"mean {mean:.1f} tokens", flush=True)
    print(json.dumps({"compile_ms": cold, "cached_ms": warm, "throughput": results, "answers": quality}))


if __name__ == "__main__":
    main()
