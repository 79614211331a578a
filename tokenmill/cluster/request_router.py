"""Which engine replica gets a request: least outstanding requests, with prefix affinity
(api/affinity.py, the router's own policy; the ingress passes the prompt's affinity key as
the `affinity` keyword)."""
from __future__ import annotations

from collections import defaultdict

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from ..api.affinity import affine_choice


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
        affine = affine_choice(candidate_replicas, key, lambda r: r.replica_id.unique_id, self._load,
                               self.max_imbalance)
        return [by_load] if affine is None else [[affine], by_load]
