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
from collections import defaultdict

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica


def _score(key: str, replica_id) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}|{replica_id.unique_id}".encode(), digest_size=8).digest(), "big")


class PrefixAffinityRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, max_imbalance: int = 4, **kwargs):
        self.max_imbalance = max_imbalance
        # requests this router sent and has not seen complete, per replica: exact and current,
        # where Serve's queue-length cache may be empty or expired (it lives 10 s)
        self._inflight: dict = defaultdict(int)

    def on_send_request(self, replica_id):
        super().on_send_request(replica_id)
        self._inflight[replica_id] += 1

    def on_request_completed(self, replica_id, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        self._inflight[replica_id] = max(0, self._inflight[replica_id] - 1)

    def on_replica_actor_died(self, replica_id):
        super().on_replica_actor_died(replica_id)
        self._inflight.pop(replica_id, None)

    def _load(self, replica: RunningReplica) -> int:
        queued = self._replica_queue_len_cache.get(replica.replica_id)
        return max(self._inflight.get(replica.replica_id, 0), queued or 0)

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
        if self._load(affine) - self._load(by_load[0]) >= self.max_imbalance:
            return [by_load]
        return [[affine], by_load]
