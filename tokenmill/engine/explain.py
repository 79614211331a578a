"""The token explorer's arithmetic: one step's raw logits replayed through the sampler's own
stages (penalties, temperature, top-k / top-p / min-p), so that a person sees how each
setting changes the distribution the next token is drawn from.

Every stage calls the functions the sampler itself uses; a seeded draw is replayed with the
same stream of draws, so the token explorer picks the token the engine would pick.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ..sampling_params import SamplingParams
from .request import child_seed
from .sampler import apply_penalties, apply_top_k_top_p_min_p, draw, seeded_uniform


@dataclass
class Stages:
    """Logits rows (V,) after each stage of one sampling step."""
    raw: torch.Tensor
    penalized: torch.Tensor     # penalties and logit_bias applied
    tempered: torch.Tensor      # / temperature (greedy: the same as penalized)
    filtered: torch.Tensor      # top-k, top-p, min-p applied: -inf outside

    def probs(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).softmax(-1) for name in ("raw", "penalized", "tempered", "filtered")}


def stages(raw: torch.Tensor, params: SamplingParams, prompt_ids: list[int], output_ids: list[int],
           eos_ids: list[int]) -> Stages:
    """raw: (V,) float32 logits of the step that follows prompt_ids + output_ids."""
    row = SimpleNamespace(params=params, output_token_ids=list(output_ids),
                          all_token_ids=list(prompt_ids) + list(output_ids), num_output_tokens=len(output_ids),
                          eos_ids=eos_ids, logits_processors=[])
    penalized = apply_penalties(raw.float().unsqueeze(0), [row])[0]
    if params.is_greedy:
        # greedy takes the argmax of the penalized logits; no temperature, no filters
        filtered = torch.full_like(penalized, float("-inf"))
        best = int(penalized.argmax())
        filtered[best] = penalized[best]
        return Stages(raw.float(), penalized, penalized, filtered)
    tempered = penalized / params.temperature
    filtered = apply_top_k_top_p_min_p(
        tempered.unsqueeze(0), torch.tensor([params.top_k]), torch.tensor([params.top_p]),
        torch.tensor([params.min_p]))[0]
    return Stages(raw.float(), penalized, tempered, filtered)


def pick(s: Stages, params: SamplingParams, step: int, generator: torch.Generator | None = None) -> int:
    """The token the sampler picks from these stages at output position `step`. With a seed,
    the draw stream is advanced past the `step` earlier draws, as in the engine."""
    if params.is_greedy:
        return int(s.penalized.argmax())
    if params.seed is not None:
        generator = torch.Generator().manual_seed(child_seed(params.seed, 0))
        for _ in range(step):
            seeded_uniform(generator)
        u = seeded_uniform(generator)
    else:
        u = torch.rand(1, dtype=torch.float64, generator=generator)
    return int(draw(s.filtered.softmax(-1).unsqueeze(0), u)[0])


def candidates(s: Stages, top_n: int, sampled: int | None) -> list[dict]:
    """The top_n tokens by raw probability and by final probability (and the sampled one),
    with their probability at every stage; sorted by final, then raw probability."""
    probs = s.probs()
    logprobs = s.raw.log_softmax(-1)
    final = probs["filtered"].topk(top_n)
    ids = set(probs["raw"].topk(top_n).indices.tolist()) | {i for i, p in zip(final.indices.tolist(),
                                                                            final.values.tolist()) if p > 0}
    if sampled is not None:
        ids.add(sampled)
    rows = [{"id": i, "logprob": float(logprobs[i]),
             **{f"p_{name}": float(p[i]) for name, p in probs.items()}} for i in ids]
    rows.sort(key=lambda r: (-r["p_filtered"], -r["p_raw"]))
    return rows


def kept(s: Stages) -> int:
    """How many tokens the filters leave to draw from."""
    return int(torch.isfinite(s.filtered).sum())
