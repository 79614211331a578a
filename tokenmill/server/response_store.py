"""Stored Responses (OpenAI's `store: true`): what GET / DELETE /v1/responses/{id} read and what
`previous_response_id` continues from.

One SQLite file (default: tokenmill/responses.sqlite3 in the user's data directory, $XDG_DATA_HOME
or ~/.local/share), so that every server process of one machine shares it. Each row belongs to
an owner (the API key's tenant, plus the router's tenant salt when one is sent): another owner
gets 404 for it, as if it did not exist. A connection per call: calls come from worker threads
(off_loop), and SQLite serialises writers across processes itself.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time


def default_path() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "tokenmill", "responses.sqlite3")


class ResponseStore:
    def __init__(self, path: str | None = None):
        self.path = path or default_path()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
                       "created REAL NOT NULL, response TEXT NOT NULL, input_items TEXT NOT NULL, "
                       "conversation TEXT NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def put(self, owner: str, response: dict, input_items: list[dict], conversation: list[dict]) -> None:
        """conversation: the neutral messages up to and including this response's answer."""
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                       (response["id"], owner, time.time(), json.dumps(response), json.dumps(input_items),
                        json.dumps(conversation)))

    def _row(self, owner: str, rid: str, column: str):
        with self._connect() as db:
            row = db.execute(f"SELECT {column} FROM responses WHERE id = ? AND owner = ?", (rid, owner)).fetchone()
        return json.loads(row[0]) if row else None

    def get(self, owner: str, rid: str) -> dict | None:
        return self._row(owner, rid, "response")

    def input_items(self, owner: str, rid: str) -> list[dict] | None:
        return self._row(owner, rid, "input_items")

    def conversation(self, owner: str, rid: str) -> list[dict] | None:
        return self._row(owner, rid, "conversation")

    def delete(self, owner: str, rid: str) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (rid, owner)).rowcount > 0
