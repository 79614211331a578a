"""A thinking budget (Anthropic's `thinking.budget_tokens`): once a thinking model has written
`budget` tokens inside its think block, the closing tag is the only token it may write next, so
the answer starts. A logits processor, pure in the output so far (speculative rows see their
draft prefix, as every processor does)."""
from __future__ import annotations

import torch


class ThinkingBudget:
    def __init__(self, budget: int, open_id: int, close_id: int, in_thought: bool):
        self.budget, self.open_id, self.close_id, self.in_thought = budget, open_id, close_id, in_thought

    def __call__(self, output_ids: list[int], row: torch.Tensor) -> torch.Tensor:
        if self.close_id in output_ids:
            return row
        if self.in_thought:      # the prompt opened the block
            start = 0
        elif self.open_id in output_ids:
            start = output_ids.index(self.open_id) + 1
        else:
            return row
        if len(output_ids) - start < self.budget:
            return row
        forced = torch.full_like(row, float("-inf"))
        forced[self.close_id] = 0.0
        return forced
