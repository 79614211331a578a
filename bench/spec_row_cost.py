"""What one more row costs in a decode step: the number behind spec_decode.ROW_COST.

    python bench/spec_row_cost.py [--context 200] [--steps 40]

Runs the bundled model's decode steps with a forced draft of k tokens (k = 0..8; the drafts
are the request's own last tokens, so most are rejected: the cost is what is measured) and
prints the median step time and its ratio to a plain step.
"""
import argparse
import statistics
import time

from tokenmill import LLM, SamplingParams
from tokenmill.engine import spec_decode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--quantization", default="auto")
    args = ap.parse_args()
    llm = LLM(show_progress=False, quantization=args.quantization)
    eng = llm.engine
    prompt = list(range(1000, 1000 + args.context))
    base = None
    print(f"{'draft k':>7} {'step ms':>8} {'x plain':>8} {'per extra row':>14}")
    for k in range(0, 9):
        spec_decode.SpecState.draft_len = lambda self, n, k=k: k
        spec_decode.NgramIndex.propose = lambda self, tokens, n: (tokens[-n:], 4)
        eng.add_request(prompt_token_ids=prompt, params=SamplingParams(temperature=0, max_tokens=10**6,
                                                                       ignore_eos=True))
        times = []
        for i in range(args.steps + 2):
            t0 = time.perf_counter()
            eng.step()
            if i >= 2:  # after the prefill
                times.append(time.perf_counter() - t0)
        for rid in list(eng.groups):
            eng.abort_request(rid)
        eng.step()
        ms = statistics.median(times) * 1000
        base = base or ms
        extra = f"{(ms / base - 1) / k:>14.3f}" if k else f"{'':>14}"
        print(f"{k:>7} {ms:>8.2f} {ms / base:>8.2f} {extra}")


if __name__ == "__main__":
    main()
