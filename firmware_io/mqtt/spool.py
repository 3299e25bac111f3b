"""The on-disk spool: every event is written here before it is published, and removed only when the
broker acknowledges it. SQLite in WAL mode with synchronous=FULL survives kill -9 and power cuts."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "SpoolFull", "Row"]


class SpoolFull(Exception):
    """No room for a new event under the configured policy."""


@dataclass(frozen=True)
class Row:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str


class Spool:
    def __init__(self, path: Path, capacity: int = 100_000, when_full: str = "drop_stats_then_refuse",
                 sync: str = "FULL"):
        self.path, self.capacity, self.when_full = Path(path), capacity, when_full
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync}")
        self._db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT "
                         "NOT NULL, payload BLOB NOT NULL, qos INTEGER, retain INTEGER, kind TEXT, created REAL)")
        self._lock = threading.Lock()
        self._count = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        self.dropped = 0

    def __len__(self) -> int:
        return self._count

    @property
    def fill(self) -> float:
        return self._count / self.capacity

    def _make_room(self) -> None:
        if self._count < self.capacity:
            return
        kinds = ("stats",) if self.when_full == "drop_stats_then_refuse" else ("stats", "alarm", "inspection")
        for kind in kinds:
            cur = self._db.execute("DELETE FROM events WHERE id = (SELECT MIN(id) FROM events WHERE kind = ?)",
                                   (kind,))
            if cur.rowcount:
                self._count -= cur.rowcount
                self.dropped += cur.rowcount
                return
        raise SpoolFull(f"spool {self.path} holds {self._count} events (capacity {self.capacity})")

    def put(self, topic: str, payload: bytes, qos: int, retain: bool, kind: str) -> int:
        with self._lock:
            self._make_room()
            cur = self._db.execute("INSERT INTO events (topic, payload, qos, retain, kind, created) "
                                   "VALUES (?, ?, ?, ?, ?, ?)", (topic, payload, qos, int(retain), kind, time.time()))
            self._count += 1
            return cur.lastrowid

    def after(self, last_id: int, limit: int) -> list[Row]:
        """Events in order, oldest first, with id > last_id."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain, kind FROM events WHERE id > ? "
                                    "ORDER BY id LIMIT ?", (last_id, limit)).fetchall()
        return [Row(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def ack(self, row_ids: list[int]) -> None:
        """Delete acknowledged events, in one transaction."""
        if not row_ids:
            return
        with self._lock:
            self._db.execute("BEGIN")
            cur = self._db.executemany("DELETE FROM events WHERE id = ?", [(r,) for r in row_ids])
            self._db.execute("COMMIT")
            self._count -= cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
