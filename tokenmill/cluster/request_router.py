"""Which engine replica gets a request: least outstanding requests, with prefix affinity.

Requests that share a prompt prefix (the ingress passes a hash of its first characters as
the `affinity` keyword) prefer the replica chosen for that prefix by rendezvous hashing, so
that its prefix cache already holds the prompt's KV blocks; the same key maps to the same
replica while the replica set stays the same, and moves for only 1/N of keys when it
changes. Affinity yields to load: when the preferred replica has `max_imbalance` or more
requests queued beyond the least loaded one, the request goes by load alone.
"""
from __future__ import annotations

import hashlib

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica


def _score(key: str, replica_id) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}|{replica_id.unique_id}".encode(), digest_size=8).digest(), "big")


class PrefixAffinityRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, max_imbalance: int = 4, **kwargs):
        self.max_imbalance = max_imbalance

    def _load(self, replica: RunningReplica) -> int:
        queued = self._replica_queue_len_cache.get(replica.replica_id)
        return queued if queued is not None else 0

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        key = pending_request.kwargs.get("affinity") if pending_request is not None else None
        # the base class probes the queue lengths of a rank and takes its least loaded replica
        by_load = sorted(candidate_replicas, key=self._load)
        if not key:
            return [by_load]
        affine = max(candidate_replicas, key=lambda r: _score(key, r.replica_id))
        if self._load(affine) - self._load(by_load[0]) >= getattr(self, "max_imbalance", 4):
            return [by_load]
        return [[affine], by_load]
