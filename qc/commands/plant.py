"""`qc broker`, `qc collect`, `qc report` and `qc fleet`: the plant side of the telemetry."""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path

from firmware_io.errors import FirmwareIOError
from firmware_io.mqtt.config import DEFAULT_PORT, DEFAULT_URL
from qc.registry import command


def _broker_args(p):
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"(default {DEFAULT_PORT})")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")


@command("broker", "run the embedded MQTT broker (amqtt) on loopback: the demo's default", _broker_args)
def broker(a):
    import threading

    from firmware_io.mqtt.broker import EmbeddedBroker

    with EmbeddedBroker(a.port, a.host) as b:
        print(f"broker listening on {b.url}", flush=True)
        try:
            threading.Event().wait(a.duration)  # None: until Ctrl-C
        except KeyboardInterrupt:
            pass
    return "broker stopped"


DB_HELP = ("the collector's database: a SQLite file, or postgresql://USER@HOST:PORT/DB (the password from "
           "PGPASSWORD or ~/.pgpass)")


def _collect_args(p):
    p.add_argument("--mqtt", default=DEFAULT_URL, help=f"broker URL (default {DEFAULT_URL})")
    p.add_argument("--db", default="telemetry.sqlite", help=DB_HELP + " (default telemetry.sqlite)")
    p.add_argument("--root", default="qc", help="topic root to subscribe to (ROOT/#)")
    p.add_argument("--group", help="share the load with the other collectors of this group (an MQTT 5 shared "
                   "subscription: each message goes to one of them)")
    p.add_argument("--id", help="this collector's client id, the same at every restart (default qc-collector-HOSTNAME)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")


@command("collect", "subscribe to qc/# and store inspections (deduplicated by id), stats, alarms and boxes",
         _collect_args)
def collect(a):
    import signal
    import threading
    import time

    from firmware_io.mqtt.collector import Collector
    from firmware_io.mqtt.config import MQTTConfig

    if a.group is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", a.group):
        raise FirmwareIOError(f"--group {a.group!r}: letters, digits, '_', '.' and '-' only")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    col = Collector(MQTTConfig(url=a.mqtt), a.db, a.root, client_id=a.id, group=a.group).start()
    print(f"collecting {a.root}/# from {a.mqtt} into {col.store.name}"
          + (f" in group {a.group}" if a.group else ""), flush=True)
    t_end = time.monotonic() + a.duration if a.duration else None
    while not stop.wait(0.2) and not (t_end and time.monotonic() > t_end):
        pass
    col.stop()
    return col.counts


def _when(text: str) -> float:
    """An ISO 8601 date or time (local time unless it says) as a Unix time."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or time like 2026-12-01 or 2026-12-01T06:00") from None


def _scope_args(p):
    p.add_argument("--db", default="telemetry.sqlite", help=DB_HELP + " (default telemetry.sqlite)")
    p.add_argument("--line", help="one line only")
    p.add_argument("--station", help="one station only")
    p.add_argument("--since", type=_when, help="from this date or time (ISO 8601)")
    p.add_argument("--until", type=_when, help="up to this date or time (ISO 8601)")


def _report_args(p):
    _scope_args(p)
    p.add_argument("--out", type=Path, default=Path("report.html"))


@command("report", "yield report (HTML with plots) of a plant, a line or a box from the collector's database",
         _report_args)
def report(a):
    try:
        from firmware_io.mqtt.report import report as run_report
    except ImportError as exc:
        raise FirmwareIOError(f"qc report needs matplotlib ({exc.name} is missing): pip install "
                              "'qc-inspect[plant]'") from exc

    return run_report(a.db, a.out, line=a.line, station=a.station, since=a.since, until=a.until)


def _fleet_args(p):
    p.add_argument("--db", default="telemetry.sqlite", help=DB_HELP + " (default telemetry.sqlite)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("fleet", "every box the collector has heard of: its version, model, threshold, last seen, parts and "
         "yield today", _fleet_args)
def fleet(a):
    import time

    from firmware_io.mqtt.store import open_store

    store = open_store(a.db, read_only=True)
    try:
        midnight = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        boxes = store.fleet(midnight)
    finally:
        store.close()
    if a.json:
        return boxes
    if not boxes:
        return f"{a.db}: no box heard of yet"
    head = ("line", "station", "version", "bundle", "sha256", "threshold", "backend", "camera", "up", "last seen",
            "parts today", "yield today")
    now = time.time()

    def ago(t):
        return "-" if t is None else f"{max(0, now - t) / 3600:.1f} h" if now - t >= 3600 else f"{max(0, now - t):.0f} s"

    rows = [(b["line"], b["station"], b["version"] or "-", b["bundle"] or "-", (b["sha256"] or "-")[:12],
             "-" if b["threshold"] is None else f"{b['threshold']:.4f}", b["backend"] or "-", b["camera"] or "-",
             ago(b["started"]), ago(b["last_seen"]) + " ago" * (b["last_seen"] is not None), str(b["parts"]),
             "-" if b["yield_pct"] is None else f"{b['yield_pct']:.2f} %") for b in boxes]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *rows])
