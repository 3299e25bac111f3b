"""`qc collect`: subscribe to qc/# and store inspections (deduplicated by id), stats and alarms in SQLite.

A persistent session (fixed client id, clean_session False) lets the broker queue QoS 1 events while the
collector is away; it reconnects by itself and resumes.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from pathlib import Path

from firmware_io.mqtt.client import new_client
from firmware_io.mqtt.config import MQTTConfig

__all__ = ["Collector", "open_db"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS inspections (id TEXT PRIMARY KEY, topic TEXT, station TEXT, line TEXT, seq INTEGER,
    ts REAL, label TEXT, score REAL, decision TEXT, reason TEXT, latency_ms REAL, model TEXT, payload TEXT);
CREATE TABLE IF NOT EXISTS stats (topic TEXT, received REAL, payload TEXT);
CREATE TABLE IF NOT EXISTS alarms (topic TEXT, ts REAL, kind TEXT, message TEXT, payload TEXT);
CREATE TABLE IF NOT EXISTS bad_messages (topic TEXT, received REAL, error TEXT, payload BLOB);
"""


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


class Collector:
    def __init__(self, cfg: MQTTConfig, db_path: Path, root: str = "qc", client_id: str = "qc-collector",
                 log_stream=sys.stderr):
        self.cfg, self.root, self.log_stream = cfg, root, log_stream
        self.db = open_db(db_path)
        self._lock = threading.Lock()
        self.counts = {"inspections": 0, "duplicates": 0, "stats": 0, "alarms": 0, "bad": 0}
        self.connected = threading.Event()
        self.client = new_client(cfg, client_id, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            print(f"[collect] broker refused the connection: {reason_code}", file=self.log_stream, flush=True)
            return
        client.subscribe(f"{self.root}/#", qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        kind = msg.topic.rsplit("/", 1)[-1]
        try:
            if kind not in ("inspection", "stats", "alarm"):
                return  # status, commands and their replies
            payload = json.loads(msg.payload.decode("utf-8"))
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
            with self._lock:
                if kind == "inspection":
                    cur = self.db.execute(
                        "INSERT OR IGNORE INTO inspections VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (str(payload["id"]), msg.topic, payload.get("station"), payload.get("line"), payload.get("seq"),
                         payload.get("ts"), payload.get("label"), payload.get("score"), payload.get("decision"),
                         payload.get("reason"), payload.get("latency_ms"), (payload.get("model") or {}).get("name"),
                         msg.payload.decode()))
                    self.counts["inspections" if cur.rowcount else "duplicates"] += 1
                elif kind == "stats":
                    self.db.execute("INSERT INTO stats VALUES (?, strftime('%s','now'), ?)", (msg.topic, msg.payload.decode()))
                    self.counts["stats"] += 1
                else:
                    self.db.execute("INSERT INTO alarms VALUES (?,?,?,?,?)", (msg.topic, payload.get("ts"),
                                    payload.get("kind"), payload.get("message"), msg.payload.decode()))
                    self.counts["alarms"] += 1
        except (ValueError, KeyError, UnicodeDecodeError) as exc:  # garbage is kept aside, never a crash
            with self._lock:
                self.db.execute("INSERT INTO bad_messages VALUES (?, strftime('%s','now'), ?, ?)",
                                (msg.topic, str(exc), bytes(msg.payload)))
                self.counts["bad"] += 1

    def start(self) -> Collector:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        with self._lock:
            self.db.close()
