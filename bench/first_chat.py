"""How well a first chat goes at candidate default sampling settings: a dozen simple questions
to the bundled model, 20 samples each, each answer judged by a fixed rule (it names the
expected fact, case-insensitive, within its first 200 characters). Prints the share of good
answers per setting; the chat page's and `tokenmill chat`'s defaults come from this.

    python bench/first_chat.py [--model PATH] [--samples 20]
"""
from __future__ import annotations

import argparse
import time

# (question, any of these in the answer means it is right)
QUESTIONS = [
    ("What is the capital of France?", ["paris"]),
    ("What is the capital of Japan?", ["tokyo"]),
    ("How many days are there in a week?", ["seven", "7"]),
    ("What color is the sky on a clear day?", ["blue"]),
    ("What is 2 + 2?", ["4", "four"]),
    ("Which planet do we live on?", ["earth"]),
    ("What is the largest ocean on Earth?", ["pacific"]),
    ("Who wrote Romeo and Juliet?", ["shakespeare"]),
    ("What is the chemical symbol for water?", ["h2o", "h₂o"]),
    ("How many legs does a spider have?", ["eight", "8"]),
    ("What is the boiling point of water in Celsius?", ["100"]),
    ("What language is spoken in Spain?", ["spanish"]),
]

CANDIDATES = {
    "greedy (temperature 0)": dict(temperature=0.0),
    "OpenAI defaults (T 1, top_p 1)": dict(temperature=1.0),
    "llama.cpp server (T 0.8, top_k 40, top_p 0.95, min_p 0.05)": dict(temperature=0.8, top_k=40, top_p=0.95,
                                                                       min_p=0.05),
    "T 0.6, top_p 0.9": dict(temperature=0.6, top_p=0.9),
    "T 0.3, top_k 40, top_p 0.95, min_p 0.05": dict(temperature=0.3, top_k=40, top_p=0.95, min_p=0.05),
    "T 0.2, min_p 0.1": dict(temperature=0.2, min_p=0.1),
}


def good(answer: str, keys: list[str]) -> bool:
    head = answer[:200].lower()
    return any(k in head for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    from tokenmill import LLM, SamplingParams
    llm = LLM(args.model, show_progress=False)
    print(f"{len(QUESTIONS)} questions x {args.samples} samples, max_tokens {args.max_tokens}")
    for name, kw in CANDIDATES.items():
        t = time.time()
        n = 1 if kw["temperature"] == 0 else args.samples
        outs = llm.chat([[{"role": "user", "content": q}] for q, _ in QUESTIONS],
                        SamplingParams(n=n, seed=1, max_tokens=args.max_tokens, **kw))
        right = [sum(good(c.text, keys) for c in out.outputs) / n for out, (_, keys) in zip(outs, QUESTIONS)]
        worst = min(right)
        print(f"{name:<62} good {100 * sum(right) / len(right):5.1f}%  worst question {100 * worst:5.1f}%  "
              f"({time.time() - t:.0f} s)")


if __name__ == "__main__":
    main()
