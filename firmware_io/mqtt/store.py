"""The plant's telemetry database: a SQLite file (the embedded default) or PostgreSQL (a postgresql:// URL,
psycopg 3), with the same tables, a schema version, and the queries `qc report` and `qc fleet` ask.

Rows arrive in batches (`Store.write`), each batch one transaction: the collector acknowledges a batch's
messages to the broker only after it commits. Inspections are deduplicated by event id. A database made by
a newer qc-inspect (a higher schema version) is refused with its version named; an older one is migrated.
On PostgreSQL `inspections` also has a `time` (timestamptz) column, and becomes a TimescaleDB hypertable on
it where that extension is installed (not verified here: TimescaleDB is not in Debian's packages).

The PostgreSQL password comes from libpq's own sources (PGPASSWORD, ~/.pgpass, PGPASSFILE), never the URL.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from firmware_io.errors import FirmwareIOError

__all__ = ["SCHEMA_VERSION", "Row", "Store", "open_store"]

SCHEMA_VERSION = 2  # 1: inspections, stats, alarms, bad_messages (SQLite, before versions); 2: + boxes, qc_schema

INSPECTION_COLUMNS = ("id", "topic", "station", "line", "seq", "ts", "label", "score", "decision", "reason",
                      "latency_ms", "model", "payload")
BOX_COLUMNS = ("line", "station", "version", "bundle", "sha256", "threshold", "backend", "camera", "started",
               "last_seen", "payload")


@dataclass
class Row:
    """One message made into a row: `kind` is a table (inspections, stats, alarms, bad_messages, boxes)."""

    kind: str
    values: tuple


def _tables(real: str, blob: str, text_json: str) -> dict[int, str]:
    """The DDL that takes a database from each version to the next (0: empty)."""
    return {
        0: f"""
CREATE TABLE IF NOT EXISTS inspections (id TEXT PRIMARY KEY, topic TEXT, station TEXT, line TEXT, seq BIGINT,
    ts {real}, label TEXT, score {real}, decision TEXT, reason TEXT, latency_ms {real}, model TEXT,
    payload {text_json});
CREATE TABLE IF NOT EXISTS stats (topic TEXT, received {real}, payload {text_json});
CREATE TABLE IF NOT EXISTS alarms (topic TEXT, ts {real}, kind TEXT, message TEXT, payload {text_json});
CREATE TABLE IF NOT EXISTS bad_messages (topic TEXT, received {real}, error TEXT, payload {blob});
""",
        1: f"""
CREATE TABLE IF NOT EXISTS boxes (line TEXT, station TEXT, version TEXT, bundle TEXT, sha256 TEXT,
    threshold {real}, backend TEXT, camera TEXT, started {real}, last_seen {real}, payload {text_json},
    PRIMARY KEY (line, station));
CREATE INDEX IF NOT EXISTS inspections_station_ts ON inspections (line, station, ts);
CREATE TABLE IF NOT EXISTS qc_schema (version INTEGER NOT NULL);
""",
    }


class Store:
    """What the collector, `qc report` and `qc fleet` need of a database; SQLite and PostgreSQL below."""

    name: str
    mark = "?"  # the driver's parameter placeholder

    def _execute(self, sql: str, args=()):
        raise NotImplementedError

    def _tables_present(self) -> set[str]:
        raise NotImplementedError

    def _version(self) -> int:
        """The schema version found (0: no tables, 1: a file from before versions); a newer one is refused."""
        present = self._tables_present()
        if "qc_schema" in present:
            found = self._execute("SELECT MAX(version) FROM qc_schema").fetchone()[0] or 0
        else:
            found = 1 if "inspections" in present else 0
        if found > SCHEMA_VERSION:
            raise FirmwareIOError(f"{self.name}: telemetry schema version {found} is newer than this qc-inspect's "
                                  f"({SCHEMA_VERSION}); upgrade qc-inspect to read it")
        return found

    def _check(self) -> None:
        """For reading: a telemetry database of a version this qc-inspect reads; nothing is created."""
        if self._version() == 0:
            raise FirmwareIOError(f"{self.name}: not a qc telemetry database (no inspections table)")

    def _migrate(self, ddl: dict[int, str], extra=None) -> None:
        """Create or bring the tables to SCHEMA_VERSION, or refuse a newer schema."""
        found = self._version()
        for version in range(found, SCHEMA_VERSION):
            self._script(ddl[version])
        if found < SCHEMA_VERSION:
            if extra:
                extra()
            self._execute("DELETE FROM qc_schema")
            self._execute(f"INSERT INTO qc_schema VALUES ({self.mark})", (SCHEMA_VERSION,))
            self._commit()

    def _script(self, sql: str) -> None:
        for statement in filter(str.strip, sql.split(";")):
            self._execute(statement)

    def _commit(self) -> None:
        raise NotImplementedError

    def _inspection_sql(self) -> str:
        raise NotImplementedError

    def _box_sql(self, inventory: bool) -> str:
        cols = BOX_COLUMNS if inventory else ("line", "station", "last_seen")
        keep = [c for c in cols if c not in ("line", "station")]
        # a box's inventory replaces the one before; a later part only moves last_seen forward
        update = ", ".join(f"{c} = excluded.{c}" for c in keep if c != "last_seen")
        seen = "last_seen = CASE WHEN excluded.last_seen > boxes.last_seen OR boxes.last_seen IS NULL " \
               "THEN excluded.last_seen ELSE boxes.last_seen END"
        return (f"INSERT INTO boxes ({', '.join(cols)}) VALUES ({', '.join([self.mark] * len(cols))}) "
                f"ON CONFLICT (line, station) DO UPDATE SET {', '.join(filter(None, [update, seen]))}")

    def write(self, rows: list[Row]) -> dict[str, int]:
        """Store a batch in one transaction; returns what was stored (inspections already stored count as
        duplicates). Raises on a database error, with nothing of the batch stored."""
        counts = dict.fromkeys(("inspections", "duplicates", "stats", "alarms", "bad", "boxes"), 0)
        by_kind: dict[str, list[tuple]] = {}
        for row in rows:
            by_kind.setdefault(row.kind, []).append(row.values)
        try:
            if inspections := by_kind.get("inspections"):
                stored = self._insert_many(self._inspection_sql(), inspections)
                counts["inspections"], counts["duplicates"] = stored, len(inspections) - stored
                seen: dict[tuple, float] = {}
                for v in inspections:  # line, station -> the newest part's time
                    key = (v[3], v[2])
                    seen[key] = max(seen.get(key, 0.0), v[5] or 0.0)
                self._many(self._box_sql(False), [(*k, t) for k, t in seen.items()])
            for kind, sql in (("stats", "INSERT INTO stats VALUES ({m}, {m}, {m})"),
                              ("alarms", "INSERT INTO alarms VALUES ({m}, {m}, {m}, {m}, {m})"),
                              ("bad_messages", "INSERT INTO bad_messages VALUES ({m}, {m}, {m}, {m})")):
                if values := by_kind.get(kind):
                    self._many(sql.format(m=self.mark), values)
                    counts["bad" if kind == "bad_messages" else kind] += len(values)
            if boxes := by_kind.get("boxes"):
                self._many(self._box_sql(True), boxes)
                counts["boxes"] = len(boxes)
            self._commit()
        except Exception:
            self._rollback()
            raise
        return counts

    def _many(self, sql: str, values: list[tuple]) -> None:
        raise NotImplementedError

    def _insert_many(self, sql: str, values: list[tuple]) -> int:
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    # --- reading ---

    def inspections(self, line: str | None = None, station: str | None = None, since: float | None = None,
                    until: float | None = None) -> list[tuple]:
        """(station, ts, label, decision, reason, latency_ms) of the parts asked for, oldest first."""
        where, args = self._where(line, station, since, until)
        return self._execute("SELECT station, ts, label, decision, reason, latency_ms FROM inspections"
                             f"{where} ORDER BY ts", args).fetchall()

    def alarm_counts(self, line: str | None = None, station: str | None = None, since: float | None = None,
                     until: float | None = None) -> list[tuple]:
        """(kind, count) of the alarms of the boxes and time asked for (an alarm's topic names its box)."""
        clauses, args = [], []
        if line or station:
            clauses.append(f"topic LIKE {self.mark}")
            args.append(f"%/{line or '%'}/{station or '%'}/alarm")
        for value, op in ((since, ">="), (until, "<")):
            if value is not None:
                clauses.append(f"ts {op} {self.mark}")
                args.append(value)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        return self._execute(f"SELECT kind, COUNT(*) FROM alarms{where} GROUP BY kind ORDER BY kind", args).fetchall()

    def _where(self, line, station, since, until) -> tuple[str, list]:
        clauses, args = [], []
        for column, value, op in (("line", line, "="), ("station", station, "="), ("ts", since, ">="),
                                  ("ts", until, "<")):
            if value is not None:
                clauses.append(f"{column} {op} {self.mark}")
                args.append(value)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def fleet(self, day_start: float | None = None) -> list[dict]:
        """Every box the collector has heard of: its inventory, when it was last heard, and since `day_start`
        (default: the last 24 hours) its parts and yield."""
        since = day_start if day_start is not None else time.time() - 86400
        boxes = self._execute(f"SELECT {', '.join(BOX_COLUMNS[:-1])} FROM boxes ORDER BY line, station").fetchall()
        parts = {(r[0], r[1]): (r[2], r[3]) for r in self._execute(
            "SELECT line, station, COUNT(*), SUM(CASE WHEN decision = 'pass' THEN 1 ELSE 0 END) FROM inspections "
            f"WHERE ts >= {self.mark} GROUP BY line, station", (since,)).fetchall()}
        out = []
        for b in boxes:
            row = dict(zip(BOX_COLUMNS[:-1], b))
            n, passed = parts.get((row["line"], row["station"]), (0, 0))
            out.append(row | {"parts": int(n), "yield_pct": round(100 * int(passed or 0) / n, 2) if n else None})
        return out

    def close(self) -> None:
        raise NotImplementedError


class SQLiteStore(Store):
    def __init__(self, path: Path, read_only: bool = False):
        self.name = str(path)
        if read_only and not Path(path).is_file():
            raise FirmwareIOError(f"{path}: no telemetry database (run `qc collect` first)")
        try:
            self.db = sqlite3.connect(f"file:{path}?mode=ro" if read_only else path, uri=read_only,
                                      check_same_thread=False, isolation_level=None)
            if read_only:
                self._check()
            else:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a crash of the process
                self._migrate(_tables("REAL", "BLOB", "TEXT"))
        except sqlite3.DatabaseError as exc:
            raise FirmwareIOError(f"{path}: not a qc telemetry database ({exc})") from None

    def _execute(self, sql, args=()):
        return self.db.execute(sql, args)

    def _tables_present(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _inspection_sql(self) -> str:
        return f"INSERT OR IGNORE INTO inspections VALUES ({', '.join('?' * len(INSPECTION_COLUMNS))})"

    def _begin(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")

    def _many(self, sql, values):
        self._begin()
        self.db.executemany(sql, values)

    def _insert_many(self, sql, values) -> int:
        self._begin()
        before = self.db.total_changes
        self.db.executemany(sql, values)
        return self.db.total_changes - before

    def _commit(self):
        if self.db.in_transaction:
            self.db.execute("COMMIT")

    def _rollback(self):
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def fleet(self, day_start=None):
        if "boxes" not in self._tables_present():  # a version-1 file read as it is
            return []
        return super().fleet(day_start)

    def close(self) -> None:
        self.db.close()


SCHEMA_LOCK = 0x71C5C4E3A  # PostgreSQL advisory lock held while one process checks and creates the schema


class PostgresStore(Store):
    mark = "%s"

    def __init__(self, url: str, read_only: bool = False):
        import psycopg

        parts = urlsplit(url)
        if parts.password is not None:
            raise FirmwareIOError("the database URL holds a password: put it in PGPASSWORD or ~/.pgpass, "
                                  "never on the command line")
        self.name = parts._replace(query="").geturl()
        try:
            self.db = psycopg.connect(url, connect_timeout=10)
        except psycopg.Error as exc:
            raise FirmwareIOError(f"{self.name}: cannot connect: {str(exc).strip().splitlines()[-1]}") from None
        self._error = psycopg.Error
        try:
            if read_only:  # qc report and qc fleet: a reader's role need not create anything
                self._check()
            else:  # collectors starting together create the tables one after another, not into each other
                self._execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                self._migrate(_tables("DOUBLE PRECISION", "BYTEA", "JSONB"), extra=self._timescale)
            self.db.commit()
        except psycopg.Error as exc:
            self.db.rollback()
            raise FirmwareIOError(f"{self.name}: {str(exc).strip().splitlines()[0]}") from None

    def _timescale(self) -> None:
        """`time` for dashboards; a hypertable on it where TimescaleDB is installed (its unique index must
        hold the time, so the key becomes (id, time): an event's time never changes, so duplicates still meet)."""
        self._execute("ALTER TABLE inspections ADD COLUMN IF NOT EXISTS time TIMESTAMPTZ "
                      "GENERATED ALWAYS AS (to_timestamp(ts)) STORED")
        if self._execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone():
            self._execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            self._execute("ALTER TABLE inspections DROP CONSTRAINT inspections_pkey")
            self._execute("ALTER TABLE inspections ALTER COLUMN time SET NOT NULL")
            self._execute("ALTER TABLE inspections ADD PRIMARY KEY (id, time)")
            self._execute("SELECT create_hypertable('inspections', 'time', migrate_data => true)")

    def _execute(self, sql, args=()):
        return self.db.execute(sql, args or None)

    def _tables_present(self) -> set[str]:
        return {r[0] for r in self.db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}

    def _inspection_sql(self) -> str:
        return (f"INSERT INTO inspections ({', '.join(INSPECTION_COLUMNS)}) VALUES "
                f"({', '.join(['%s'] * len(INSPECTION_COLUMNS))}) ON CONFLICT DO NOTHING")

    def _many(self, sql, values):
        with self.db.cursor() as cur:
            cur.executemany(sql, values)

    def _insert_many(self, sql, values) -> int:
        with self.db.cursor() as cur:
            cur.executemany(sql, values)
            return cur.rowcount

    def _commit(self):
        self.db.commit()

    def _rollback(self):
        try:
            self.db.rollback()
        except self._error:
            pass  # the connection is gone: the transaction with it

    def close(self) -> None:
        self.db.close()


def open_store(target: str | Path, read_only: bool = False) -> Store:
    """A postgresql:// (or postgres://) URL, or a SQLite file's path."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text, read_only)
    return SQLiteStore(Path(text), read_only)
