"""LLMEngine: requests in, RequestOutputs out, one step at a time.

  add_request(prompt, SamplingParams) -> n Requests in the scheduler's queue
  step():  Scheduler.schedule() -> ScheduledBatch
           ModelRunner.execute() -> logits (S, V)
           Sampler -> token ids -> Scheduler.update() (token stops)
           IncrementalDetokenizer (text, stop strings) -> RequestOutput per touched request
"""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field

import torch

from ..config import EngineConfig
from ..model.loader import load_checkpoint
from ..sampling_params import SamplingParams
from .block_manager import BlockManager
from .detokenizer import IncrementalDetokenizer
from .model_runner import ModelRunner
from .outputs import CompletionOutput, RequestOutput
from .request import Request, RequestStatus
from .sampler import LOGPROB_FLOOR, Sampler, seeded_uniform
from .scheduler import Scheduler
from .spec_decode import DraftView, SpecConfig, accept, propose
from .structured import GrammarCompiler
from .stats import EngineStats


log = logging.getLogger("tokenmill")


class PromptTooLongError(ValueError):
    pass


class InjectedFault(RuntimeError):
    """Raised by step() when TOKENMILL_FAULT_AT_STEP says so: how tests kill the engine loop."""


def _fault_step() -> int | None:
    value = os.environ.get("TOKENMILL_FAULT_AT_STEP")
    return int(value) if value else None


@dataclass
class _Group:
    """One user request: its n samples and their detokenizers."""
    prompt: str | None
    prompt_token_ids: list[int]
    children: list[Request]
    detoks: list[IncrementalDetokenizer]
    num_sent_tokens: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(c.status.is_finished for c in self.children)


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None):
        self.config = config = config or EngineConfig()
        checkpoint = load_checkpoint(config.model)
        self.model_config = checkpoint.config
        self.model_name = checkpoint.config.name
        self.model_path = checkpoint.path
        self.quantization = checkpoint.quantization
        self.tokenizer = checkpoint.tokenizer()
        self.runner = ModelRunner(config, checkpoint)
        self.weights = self.runner.describe_weights()
        log.info("weights: %s; KV cache %s", self.weights["summary"], self.weights["kv_cache_dtype"])
        capacity = self.runner.num_blocks * config.block_size
        wanted = min(config.max_model_len or self.model_config.max_position, self.model_config.max_position)
        self.max_model_len = min(wanted, capacity)
        for rope in self.runner.model.rotaries():
            rope.trim(self.max_model_len)
        if self.max_model_len < wanted:
            log.warning("max_model_len lowered from %d to %d tokens: the KV cache (%.3g GiB, %d blocks "
                        "of %d) holds no more; raise kv_cache_memory_gib for more", wanted,
                        self.max_model_len, config.kv_cache_memory_gib, self.runner.num_blocks,
                        config.block_size)
        if not config.enable_chunked_prefill and config.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"with chunked prefill off, max_num_batched_tokens ({config.max_num_batched_tokens}) must "
                f"be at least max_model_len ({self.max_model_len}), or a long prompt could never be "
                f"scheduled; raise it, lower max_model_len, or turn chunked prefill on")
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size,
                                          config.enable_prefix_caching, self.runner.local_blocks,
                                          self.runner.window)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   config.max_num_batched_tokens, self.max_model_len,
                                   config.enable_chunked_prefill)
        self.sampler = Sampler()
        self.spec = (SpecConfig(max_draft=config.spec_max_draft, max_batch=config.spec_max_batch)
                     if config.speculation == "ngram" and config.spec_max_draft > 0 else None)
        self.structured = GrammarCompiler(self.tokenizer, self.model_config.vocab_size)
        self.groups: dict[str, _Group] = {}
        self._aborted: list[str] = []
        self._ids = itertools.count()
        self.stats = EngineStats(num_kv_blocks=self.runner.num_blocks, block_size=config.block_size)
        self._fault_at = _fault_step()

    # ---- requests in -------------------------------------------------------------------
    def add_request(self, request_id: str | None = None, prompt: str | None = None,
                    params: SamplingParams | None = None, prompt_token_ids: list[int] | None = None,
                    arrival_time: float | None = None, cache_salt: str | None = None) -> str:
        params = params or SamplingParams()
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self.groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        if prompt_token_ids is None:
            if prompt is None:
                raise ValueError("give a prompt or prompt_token_ids")
            prompt_token_ids = self.tokenizer.encode(prompt)
        self.validate(prompt_token_ids, params)
        children = [Request(request_id if params.n == 1 else f"{request_id}-{i}", prompt_token_ids,
                            params, self.tokenizer.eos_ids, index=i, parent_id=request_id,
                            arrival_time=arrival_time, cache_salt=cache_salt)
                    for i in range(params.n)]
        detoks = [IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params) for _ in children]
        self.groups[request_id] = _Group(prompt, list(prompt_token_ids), children, detoks, [0] * params.n)
        for c in children:
            self.scheduler.add(c)
        return request_id

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        vocab = self.model_config.vocab_size
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_token_ids) >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_token_ids)} tokens, but this model's context is "
                f"{self.max_model_len} tokens (and at least one must be left to generate)")
        for what, ids in (("prompt token id", prompt_token_ids), ("logit_bias token id", params.logit_bias),
                          ("stop token id", params.stop_token_ids)):
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise ValueError(f"{what} {bad[0]} is out of range (vocabulary size {vocab})")

    def abort_request(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks. Its final output (finish_reason
        "abort") comes with the next step()."""
        group = self.groups.get(request_id)
        if group is None:
            return False
        for c in group.children:
            self.scheduler.finish(c, RequestStatus.FINISHED_ABORTED)
        self._aborted.append(request_id)
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self.groups)

    # ---- one step ----------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self._fault_at is not None and self.stats.num_steps >= self._fault_at:
            raise InjectedFault(f"fault injected at step {self._fault_at} (TOKENMILL_FAULT_AT_STEP)")
        if self.spec is not None:
            propose(self.scheduler.running, self.spec, self.max_model_len)
        batch = self.scheduler.schedule()
        sampled: dict[str, list[tuple[int, tuple | None]]] = {}
        if len(batch):
            logits, reqs = self.runner.execute(batch)
            for req, start, prompt_logits in self.runner.prompt_logits:
                self._record_prompt_logprobs(req, start, prompt_logits)
            if reqs:
                sampled = self._sample(logits, reqs)
            self.stats.num_steps += 1
            self.stats.num_prompt_tokens += sum(
                min(n, max(0, r.num_prompt_tokens - r.num_computed_tokens))
                for r, n in zip(batch.requests, batch.num_new_tokens))
        touched: dict[str, None] = dict.fromkeys(self._aborted)
        self._aborted = []
        token_lists = {rid: [t for t, _ in toks] for rid, toks in sampled.items()}
        for req, tokens in self.scheduler.update(batch, token_lists):
            group = self.groups[req.parent_id]
            for token, lp in sampled[req.request_id]:
                self.scheduler.append_token(req, token)
                self.stats.num_generation_tokens += 1
                if lp is not None:
                    req.logprobs.append(lp)
                if token not in req.eos_ids or req.status != RequestStatus.FINISHED_STOPPED:
                    stop = group.detoks[req.index].add_token(token)
                    if stop is not None and not req.status.is_finished:
                        req.stop_reason = stop
                        self.scheduler.finish(req, RequestStatus.FINISHED_STOPPED)
                if req.status.is_finished:
                    break  # tokens after a stop are dropped
            touched[req.parent_id] = None
        if len(batch):
            for req, vec in self.runner.pooled:  # embedding requests: done once their prompt is
                if not req.status.is_finished:
                    req.embedding = vec.tolist()
                    self.scheduler.finish(req, RequestStatus.FINISHED_STOPPED)
                    touched[req.parent_id] = None
        outputs = [self._make_output(rid) for rid in touched if rid in self.groups]
        return outputs

    def _sample(self, logits: torch.Tensor, reqs: list) -> dict[str, list[tuple[int, tuple | None]]]:
        """A (token, logprob) list per request: one, or with a draft the accepted ones and one
        more (spec_decode.py). logits: one row per request, or 1 + len(draft) rows."""
        if not any(r.draft for r in reqs):
            out = self.sampler(logits, reqs)
            return {r.request_id: [(t, lp)] for r, t, lp in zip(reqs, out.token_ids, out.logprobs)}
        rows = [DraftView(r, j) for r in reqs for j in range(len(r.draft) + 1)]
        # a seeded row's generator must end up as far as plain decoding would have taken it
        states = {r.request_id: r.generator.get_state() for r in reqs
                  if r.draft and r.generator is not None and not r.params.is_greedy}
        out = self.sampler(logits, rows)
        sampled, i = {}, 0
        for r in reqs:
            k = len(r.draft)
            tokens = accept(r, out.token_ids[i:i + k + 1]) if k else out.token_ids[i:i + 1]
            sampled[r.request_id] = list(zip(tokens, out.logprobs[i:i + len(tokens)]))
            i += k + 1
            if not k:
                continue
            self.stats.spec_num_drafts += 1
            self.stats.spec_num_draft_tokens += k
            self.stats.spec_num_accepted_tokens += len(tokens) - 1
            for processor in r.logits_processors:  # back to the real history
                rollback = getattr(processor, "rollback_to", None)
                if rollback is not None:
                    rollback(r.num_output_tokens)
            if r.request_id in states:
                r.generator.set_state(states[r.request_id])
                for _ in tokens:
                    seeded_uniform(r.generator)
        return sampled

    def _record_prompt_logprobs(self, req, start: int, logits) -> None:
        """logits (k, V) at positions start..start+k-1 give prompt tokens start+1..start+k."""
        if len(req.prompt_logprobs) != start + 1:
            return  # recomputed after a preemption: already recorded
        lp = logits.float().log_softmax(-1).nan_to_num_(nan=LOGPROB_FLOOR).clamp_(min=LOGPROB_FLOOR)
        targets = torch.tensor(req.prompt_token_ids[start + 1:start + 1 + len(lp)], device=lp.device)
        chosen = lp.gather(1, targets.unsqueeze(1)).squeeze(1).tolist()
        k = req.params.prompt_logprobs
        top_v, top_i = lp.topk(max(k, 1), dim=-1)
        for j, value in enumerate(chosen):
            req.prompt_logprobs.append((value, dict(zip(top_i[j, :k].tolist(), top_v[j, :k].tolist()))))

    def _make_output(self, request_id: str) -> RequestOutput:
        group = self.groups[request_id]
        completions = []
        for i, (req, detok) in enumerate(zip(group.children, group.detoks)):
            finished = req.status.is_finished
            delta = detok.flush(finished)
            sent = group.num_sent_tokens[i]
            group.num_sent_tokens[i] = req.num_output_tokens
            completions.append(CompletionOutput(
                index=req.index, text=detok.text[:detok.num_emitted], token_ids=list(req.output_token_ids),
                text_delta=delta, token_ids_delta=req.output_token_ids[sent:],
                logprobs=list(req.logprobs) if req.params.logprobs is not None else None,
                finish_reason=req.finish_reason, stop_reason=req.stop_reason,
                raw_logits=list(req.raw_logits) if req.params.return_raw_logits else None,
                embedding=req.embedding))
        finished = group.finished
        if finished:
            del self.groups[request_id]
            for req in group.children:
                reason = req.finish_reason
                self.stats.finished_by_reason[reason] = self.stats.finished_by_reason.get(reason, 0) + 1
        first = group.children[0]
        return RequestOutput(request_id, group.prompt, group.prompt_token_ids, completions, finished,
                             num_cached_tokens=first.num_cached_tokens, metrics=first.metrics,
                             prompt_logprobs=list(first.prompt_logprobs) if first.prompt_logprobs else None)

    def get_stats(self) -> EngineStats:
        s = self.stats
        s.num_running = len(self.scheduler.running)
        s.num_waiting = len(self.scheduler.waiting)
        s.kv_cache_usage = self.block_manager.usage
        s.prefix_cache_queries = self.block_manager.prefix_queries
        s.prefix_cache_hits = self.block_manager.prefix_hits
        s.num_preemptions = self.scheduler.num_preemptions
        return s
