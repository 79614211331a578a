"""One cost ledger for the whole Ray Serve app: a named, detached actor holding the SQLite
ledger, shared by every ingress replica (each would otherwise keep its own file).

A row is sent without making the request wait, and a thread waits for the actor's
acknowledgement: a row the actor did not take (it died and was restarted, or did not answer
in time) is sent again, up to RETRIES times, and only then logged as lost."""
import logging
import threading
import time

import ray

from ..router.ledger import Ledger


RETRIES = 3
ACK_TIMEOUT_S = 30.0
log = logging.getLogger("tokenmill.router")


@ray.remote(num_cpus=0, max_restarts=-1)
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
        self._pending: dict = {}  # ObjectRef -> (row, tries, sent at)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._acknowledge, name="tokenmill-ledger-ack", daemon=True).start()

    def record(self, **row) -> None:
        self._send(row, 1)  # the request does not wait for the disk

    def _send(self, row: dict, tries: int) -> None:
        with self._lock:
            self._pending[self.actor.record.remote(row)] = (row, tries, time.monotonic())
        self._wake.set()

    def _acknowledge(self) -> None:
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                refs = list(self._pending)
            if not refs:
                continue
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
            now = time.monotonic()
            for ref in refs:
                with self._lock:
                    row, tries, sent = self._pending[ref]
                if ref in ready:
                    try:
                        ray.get(ref)
                        failed = None
                    except Exception as e:  # the actor died with the row, or refused it
                        failed = e
                elif now - sent > ACK_TIMEOUT_S:
                    failed = TimeoutError(f"no acknowledgement in {ACK_TIMEOUT_S:.0f} s")
                else:
                    continue
                with self._lock:
                    del self._pending[ref]
                if failed is None:
                    continue
                if tries < RETRIES:
                    self._send(row, tries + 1)
                else:
                    log.error("ledger: a row was lost after %d tries (%s): %s", tries, failed, row)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def report(self, by: str = "key") -> list:
        return ray.get(self.actor.report.remote(by), timeout=10)

    def flush(self, timeout: float = 10.0) -> None:
        """Every row recorded so far acknowledged (or given up), then written."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        ray.get(self.actor.report.remote("key"), timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        pass  # the actor outlives any one ingress replica
