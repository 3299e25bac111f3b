"""`qc collect`: subscribe to qc/# and store inspections (deduplicated by id), stats, alarms and each box's
inventory in a database (firmware_io.mqtt.store: a SQLite file or PostgreSQL).

Nothing is lost between the broker and the database: a persistent session (a stable client id) keeps QoS 1
events queued at the broker while the collector is away, and each message is acknowledged to the broker
only after the batch holding it is committed (paho's manual acknowledgement), so a collector killed between
receipt and commit gets the message again. The database drops what it already has.

Collectors share the load in a group (`group`): an MQTT 5 shared subscription, `$share/GROUP/qc/#`, hands each
message to one member; each member also subscribes to the boxes' retained `info` (a shared subscription gets
no retained messages). Mosquitto 2 keeps a killed member's share queued for its session until it returns.
"""

from __future__ import annotations

import json
import math
import queue
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from firmware_io.mqtt.client import new_client
from firmware_io.mqtt.config import MQTTConfig
from firmware_io.mqtt.store import Row, open_store

__all__ = ["BATCH", "MAX_PAYLOAD", "Collector", "default_client_id", "parse"]

MAX_PAYLOAD = 64 * 1024  # an event is well under 4 KiB; a larger payload is kept aside, cut to KEEP_BAD bytes
KEEP_BAD = 4096
BATCH = 500  # messages committed together at most
SESSION_EXPIRY_S = 7 * 86400  # how long the broker keeps a collector's queue while it is away (MQTT 5)


class _Event(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    station: str = Field(max_length=200)
    line: str = Field(max_length=200)

    @field_validator("*")
    @classmethod
    def _finite(cls, v):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("not a finite number")
        return v


class Inspection(_Event):
    id: str = Field(min_length=1, max_length=200)
    ts: float
    decision: Literal["pass", "reject"]
    seq: int | None = None
    label: str | None = None
    score: float | None = None
    reason: str | None = None
    latency_ms: float | None = None
    model: dict | None = None


class Alarm(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    kind: str = Field(max_length=200)
    message: str = ""
    ts: float | None = None


class Bundle(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    name: str | None = None
    sha256: str | None = None


class Info(_Event):
    version: str
    bundle: Bundle
    threshold: float
    backend: str
    camera: str
    started: float


def parse(topic: str, payload: bytes, received: float) -> Row | None:
    """A message as a row; None for what is not stored (status, commands and their replies). A message that is
    not what its topic says becomes a `bad_messages` row naming the problem."""
    kind = topic.rsplit("/", 1)[-1]
    if kind not in ("inspection", "stats", "alarm", "info"):
        return None
    try:
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(payload)} bytes, over the {MAX_PAYLOAD} allowed")
        text = payload.decode("utf-8")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if kind == "inspection":
            e = Inspection.model_validate(data)
            return Row("inspections", (e.id, topic, e.station, e.line, e.seq, e.ts, e.label, e.score, e.decision,
                                       e.reason, e.latency_ms, (e.model or {}).get("name"), text))
        if kind == "stats":
            return Row("stats", (topic, received, text))
        if kind == "alarm":
            a = Alarm.model_validate(data)
            return Row("alarms", (topic, a.ts, a.kind, a.message, text))
        i = Info.model_validate(data)
        return Row("boxes", (i.line, i.station, i.version, i.bundle.name, i.bundle.sha256, i.threshold, i.backend,
                             i.camera, i.started, received, text))
    except (ValueError, UnicodeDecodeError) as exc:  # pydantic's ValidationError is a ValueError
        why = (f"{exc.error_count()} field(s) wrong: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
               if isinstance(exc, ValidationError) else str(exc))
        return Row("bad_messages", (topic, received, why[:1000], bytes(payload[:KEEP_BAD])))


def default_client_id() -> str:
    """Stable across restarts of a collector on one machine; two on one machine need --id each."""
    return f"qc-collector-{socket.gethostname()}"


class Collector:
    def __init__(self, cfg: MQTTConfig, db: str | Path, root: str = "qc", client_id: str | None = None,
                 group: str | None = None, log_stream=sys.stderr):
        self.cfg, self.root, self.group, self.log_stream = cfg, root, group, log_stream
        self.db_target = db
        self.store = open_store(db)
        self.counts = dict.fromkeys(("inspections", "duplicates", "stats", "alarms", "bad", "boxes", "db_errors"), 0)
        self.connected = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        v5 = group is not None
        self.client = new_client(cfg, client_id or default_client_id(), clean_session=None if v5 else False,
                                 protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self._writer = threading.Thread(target=self._write_loop, name="collector-writer", daemon=True)

    def _say(self, msg: str) -> None:
        print(f"[collect] {msg}", file=self.log_stream, flush=True)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._say(f"broker refused the connection: {reason_code}")
            return
        if self.group:
            client.subscribe([(f"$share/{self.group}/{self.root}/#", 1), (f"{self.root}/+/+/info", 1)])
        else:
            client.subscribe(f"{self.root}/#", qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        self._queue.put((parse(msg.topic, msg.payload, time.time()), msg.mid, msg.qos))

    def _write_loop(self) -> None:
        backoff = 0.5
        while True:
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            deadline = time.monotonic() + 0.02
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            rows = [row for row, _, _ in batch if row is not None]
            while rows:
                try:
                    for k, n in self.store.write(rows).items():
                        self.counts[k] += n
                    backoff = 0.5
                    break
                except Exception as exc:  # the database away or full: nothing acknowledged, tried again
                    self.counts["db_errors"] += 1
                    self._say(f"cannot store {len(rows)} message(s) in {self.store.name}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}; "
                              f"trying again in {backoff:.1f} s")
                    time.sleep(backoff)
                    backoff = min(10.0, backoff * 2)
                    self._reopen()
            for _, mid, qos in batch:  # committed: now the broker may forget them
                if qos:
                    self.client.ack(mid, qos)

    def _reopen(self) -> None:
        try:
            self.store.close()
        except Exception:
            pass
        try:
            self.store = open_store(self.db_target)
        except Exception as exc:
            self._say(f"cannot reopen {self.db_target}: {exc}")

    def start(self) -> Collector:
        props = None
        if self.group:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.ReceiveMaximum = BATCH  # unacknowledged messages the broker may send ahead of the commits
        kwargs = {"clean_start": False, "properties": props} if self.group else {}
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, **kwargs)
        self._writer.start()
        self.client.loop_start()
        return self

    def stop(self) -> None:
        """Store and acknowledge what has arrived, then leave (the session stays for the next start)."""
        self._stop.set()
        self._writer.join(timeout=30)
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()
