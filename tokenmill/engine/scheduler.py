"""Continuous batching.

Each step the scheduler hands out a token budget. Running requests come first (decodes and
unfinished prefill chunks, oldest first); then waiting requests are admitted, oldest first,
while budget, blocks and max_num_seqs allow. There is no prefill/decode branch: each scheduled
request gets min(num_tokens - num_computed_tokens, budget) tokens.

When blocks run out, the newest running request is preempted: its blocks are freed and it
goes back to the front of the queue to be recomputed later (its tokens so far become its
prompt; with prefix caching most of it is a cache hit). Nothing is dropped.

Token stops (EOS, stop token ids, max_tokens, context length) are decided here; stop
strings are the detokenizer's, which then calls finish().
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager
from .request import Request, RequestStatus


@dataclass
class ScheduledBatch:
    requests: list[Request]
    num_new_tokens: list[int]

    def __len__(self):
        return len(self.requests)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, enable_chunked_prefill: bool = True):
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        budget = self.max_num_batched_tokens
        batch = ScheduledBatch([], [])
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens - req.num_computed_tokens, budget)
            if req.draft:  # speculative tokens ride along while budget and free blocks allow
                req.draft = req.draft[:max(0, budget - n)]
                if req.draft and self.bm.can_allocate(req, n + len(req.draft)):
                    n += len(req.draft)
                else:
                    req.draft = []
            while not self.bm.can_allocate(req, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            else:
                self.bm.allocate(req, n)
                batch.requests.append(req)
                batch.num_new_tokens.append(n)
                budget -= n
                i += 1
                continue
            break
        # Admitting new work right after a preemption would only thrash.
        while (not preempted and self.waiting and budget > 0
               and len(self.running) < self.max_num_seqs):
            req = self.waiting[0]
            computed = self.bm.get_computed_blocks(req)
            num_cached = len(computed) * self.bm.block_size
            n = req.num_tokens - num_cached
            if n > budget:
                if not self.enable_chunked_prefill:
                    break
                n = budget
            if not self.bm.can_allocate(req, n, computed):
                break
            self.bm.count_prefix_lookup(req, computed)
            self.bm.allocate(req, n, computed)
            self.waiting.popleft()
            req.num_computed_tokens = num_cached
            if req.metrics.first_scheduled_time is None:
                req.num_cached_tokens = num_cached
                req.metrics.first_scheduled_time = time.time()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            batch.requests.append(req)
            batch.num_new_tokens.append(n)
            budget -= n
        return batch

    def _preempt(self, req: Request) -> None:
        self.bm.free(req)
        req.num_computed_tokens = 0
        req.draft = []
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)
        self.num_preemptions += 1

    def update(self, batch: ScheduledBatch, sampled: dict[str, list[int]]) -> list[tuple[Request, list[int]]]:
        """Advance counters after the forward pass. Returns (request, its new tokens) for the
        requests whose computation caught up: one token, or with a draft the accepted drafts
        and one more. Rejected draft positions are not computed: their K/V is overwritten later."""
        got_tokens = []
        for req, n in zip(batch.requests, batch.num_new_tokens):
            tokens = sampled.get(req.request_id)
            if tokens is None:
                req.num_computed_tokens += n  # a prefill chunk that is not the last one
                continue
            req.num_computed_tokens += n - (len(req.draft) - (len(tokens) - 1))
            req.draft = []
            got_tokens.append((req, tokens))
        return got_tokens

    def append_token(self, req: Request, token: int) -> None:
        """Append one sampled token and apply token stops (EOS, stop ids, max_tokens, context)."""
        req.append_token(token)
        if req.metrics.first_token_time is None:
            req.metrics.first_token_time = time.time()
        p = req.params
        if req.num_output_tokens >= p.min_tokens and token in req.eos_ids:
            self.finish(req, RequestStatus.FINISHED_STOPPED)
        elif req.num_output_tokens >= p.min_tokens and token in p.stop_token_ids:
            req.stop_reason = token
            self.finish(req, RequestStatus.FINISHED_STOPPED)
        elif p.max_tokens is not None and req.num_output_tokens >= p.max_tokens:
            self.finish(req, RequestStatus.FINISHED_LENGTH)
        elif req.num_tokens >= self.max_model_len:
            self.finish(req, RequestStatus.FINISHED_LENGTH)

    def finish(self, req: Request, status: RequestStatus) -> None:
        """Finish (or abort) a request wherever it is; its blocks are freed at once."""
        if req.status.is_finished:
            return
        if req.status == RequestStatus.RUNNING:
            self.running.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        self.bm.free(req)
        req.status = status
        req.metrics.finish_time = time.time()
