"""The on-disk spool: every event is written here before it is published, and removed only when the
broker acknowledges it. SQLite in WAL mode with synchronous=FULL survives kill -9 and power cuts.

A full disk is a state, not a crash: a new event is refused (SpoolFull) while the spool's filesystem has
less than `reserve_bytes` free, so that SQLite keeps the room it needs to delete acknowledged events and
drain; a database error on insert refuses the event too. One process owns a spool: a second one on the same
file is refused at once (SpoolBusy), since two would each replay the other's events."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from firmware_io.errors import FirmwareIOError

__all__ = ["Spool", "SpoolBusy", "SpoolFull", "Row"]


class SpoolFull(Exception):
    """No room for a new event: the spool's capacity under its policy, or the disk's reserve."""


class SpoolBusy(FirmwareIOError):
    """Another process holds the spool."""


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
                 sync: str = "FULL", reserve_bytes: int = 16 << 20):
        self.path, self.capacity, self.when_full = Path(path), capacity, when_full
        self.reserve_bytes = reserve_bytes
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lockfile = self._take(self.path.with_name(self.path.name + ".lock"))
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # private; SQLite gives its -wal the same mode
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync}")
        # every commit appends whole pages to the write-ahead log: checkpoint it every 1 MiB and cut it back to
        # 2 MiB after, so that it does not grow to the default's 4 MiB and more on a small disk
        self._db.execute("PRAGMA wal_autocheckpoint=256")
        self._db.execute(f"PRAGMA journal_size_limit={2 << 20}")
        self._db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT "
                         "NOT NULL, payload BLOB NOT NULL, qos INTEGER, retain INTEGER, kind TEXT, created REAL)")
        self._lock = threading.Lock()
        self._count = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        self.dropped = 0

    @staticmethod
    def _take(lock: Path):
        """An exclusive lock for as long as this process lives (the kernel drops it with the process)."""
        f = os.fdopen(os.open(lock, os.O_RDWR | os.O_CREAT, 0o600), "r+")  # held until close()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "?"
            f.close()
            raise SpoolBusy(f"spool {lock.with_suffix('')} is in use by another process (pid {owner}); one box, "
                            "one spool: stop the other qc or give this one its own mqtt.spool_path") from None
        f.seek(0)
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        return f

    def __len__(self) -> int:
        return self._count

    def free_bytes(self) -> int:
        """Free space on the spool's disk, counting the pages the spool's own file holds free for reuse."""
        st = os.statvfs(self.path.parent)
        free = st.f_bavail * st.f_frsize
        if free < self.reserve_bytes:  # the file never shrinks; its emptied pages take new events first
            pages, size = (self._db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("freelist_count", "page_size"))
            free += pages * size
        return free

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
            if (free := self.free_bytes()) < self.reserve_bytes:
                raise SpoolFull(f"disk under spool {self.path} has {free >> 10} KiB free, below the "
                                f"{self.reserve_bytes >> 10} KiB kept in reserve for draining")
            try:
                cur = self._db.execute("INSERT INTO events (topic, payload, qos, retain, kind, created) VALUES "
                                       "(?, ?, ?, ?, ?, ?)", (topic, payload, qos, int(retain), kind, time.time()))
            except sqlite3.Error as exc:
                raise SpoolFull(f"spool {self.path}: {exc}") from None
            self._count += 1
            return cur.lastrowid

    def after(self, last_id: int, limit: int) -> list[Row]:
        """Events in order, oldest first, with id > last_id."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain, kind FROM events WHERE id > ? "
                                    "ORDER BY id LIMIT ?", (last_id, limit)).fetchall()
        return [Row(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def ack(self, row_ids: list[int]) -> None:
        """Delete acknowledged events, in one transaction; on a database error (a full disk) none is deleted
        and the error is raised, for the caller to try again."""
        if not row_ids:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN")
                cur = self._db.executemany("DELETE FROM events WHERE id = ?", [(r,) for r in row_ids])
                self._db.execute("COMMIT")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._count -= cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lockfile.close()
