"""Cost ledger: every request the router answers, in SQLite.

record() only queues the row; a writer thread inserts and commits, so the router's event loop
never waits on the disk."""
from __future__ import annotations

import queue
import sqlite3
import threading
import time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    ts REAL NOT NULL, day TEXT NOT NULL, api_key TEXT NOT NULL, route TEXT NOT NULL,
    backend TEXT, model TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    latency_ms REAL NOT NULL, cache_hit INTEGER NOT NULL, status INTEGER NOT NULL, cost REAL NOT NULL
)"""


class Ledger:
    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False)
        # WAL + NORMAL: a commit per request without an fsync per request (a crash may lose
        # the last few rows, never corrupt the file)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(_SCHEMA)
        self.db.commit()
        self._rows: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write, name="tokenmill-ledger", daemon=True)
        self._writer.start()

    def record(self, *, api_key: str, route: str, backend: str | None, model: str | None,
               prompt_tokens: int, completion_tokens: int, latency_s: float, cache_hit: bool,
               status: int, cost: float) -> None:
        now = time.time()
        self._rows.put((now, time.strftime("%Y-%m-%d", time.gmtime(now)), api_key, route, backend,
                        model, prompt_tokens, completion_tokens, latency_s * 1000, int(cache_hit),
                        status, cost))

    def _write(self) -> None:
        while True:
            rows = [self._rows.get()]
            while not self._rows.empty():  # one commit for whatever has piled up
                rows.append(self._rows.get_nowait())
            stop = None in rows
            rows = [r for r in rows if r is not None]
            with self.lock:
                if rows:
                    self.db.executemany("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                    self.db.commit()
            if stop:
                return

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued row is written (tests, shutdown)."""
        deadline = time.time() + timeout
        while not self._rows.empty() and time.time() < deadline:
            time.sleep(0.01)
        with self.lock:
            pass

    def report(self, by: str = "key") -> list[tuple]:
        return usage_report(self.path, by)

    def close(self):
        self._rows.put(None)
        self._writer.join(timeout=10)
        with self.lock:
            self.db.close()


def usage_report(path: str, by: str = "key") -> list[tuple]:
    """Rows of (group, requests, cache hits, prompt tokens, completion tokens, cost)."""
    column = {"key": "api_key", "route": "route", "day": "day", "model": "model"}[by]
    db = sqlite3.connect(path)
    try:
        return db.execute(
            f"SELECT {column}, COUNT(*), SUM(cache_hit), SUM(prompt_tokens), SUM(completion_tokens), "
            f"SUM(cost) FROM requests GROUP BY {column} ORDER BY {column}").fetchall()
    finally:
        db.close()
