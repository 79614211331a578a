"""One cost ledger for the whole Ray Serve app: a named, detached actor holding the SQLite
ledger, shared by every ingress replica (each would otherwise keep its own file)."""
import ray

from ..router.ledger import Ledger


@ray.remote(num_cpus=0)
class LedgerActor:
    def __init__(self, path: str):
        self.ledger = Ledger(path)

    def record(self, row: dict) -> None:
        self.ledger.record(**row)

    def report(self, by: str) -> list:
        self.ledger.flush()
        return self.ledger.report(by)


class SharedLedger:
    """The router's ledger interface (record / report / flush / close) over that actor."""

    def __init__(self, path: str, name: str):
        self.actor = LedgerActor.options(name=name, namespace="tokenmill", get_if_exists=True,
                                         lifetime="detached").remote(path)

    def record(self, **row) -> None:
        self.actor.record.remote(row)  # fire and forget: the request does not wait for the disk

    def report(self, by: str = "key") -> list:
        return ray.get(self.actor.report.remote(by), timeout=10)

    def flush(self, timeout: float = 10.0) -> None:
        ray.get(self.actor.report.remote("key"), timeout=timeout)  # after every record sent before

    def close(self) -> None:
        pass  # the actor outlives any one ingress replica
