"""`qc broker`, `qc collect` and `qc report`: the plant side of the telemetry."""

from __future__ import annotations

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


def _collect_args(p):
    p.add_argument("--mqtt", default=DEFAULT_URL, help=f"broker URL (default {DEFAULT_URL})")
    p.add_argument("--db", type=Path, default=Path("telemetry.sqlite"), help="SQLite file to fill")
    p.add_argument("--root", default="qc", help="topic root to subscribe to (ROOT/#)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")


@command("collect", "subscribe to qc/# and store inspections (deduplicated by id), stats and alarms", _collect_args)
def collect(a):
    import signal
    import threading
    import time

    from firmware_io.mqtt.collector import Collector
    from firmware_io.mqtt.config import MQTTConfig

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    col = Collector(MQTTConfig(url=a.mqtt), a.db, a.root).start()
    print(f"collecting {a.root}/# from {a.mqtt} into {a.db}", flush=True)
    t_end = time.monotonic() + a.duration if a.duration else None
    while not stop.wait(0.2) and not (t_end and time.monotonic() > t_end):
        pass
    col.stop()
    return col.counts


def _report_args(p):
    p.add_argument("--db", type=Path, default=Path("telemetry.sqlite"), help="the collector's SQLite file")
    p.add_argument("--out", type=Path, default=Path("report.html"))


@command("report", "yield report (HTML with plots) from the collector's database", _report_args)
def report(a):
    try:
        from firmware_io.mqtt.report import report as run_report
    except ImportError as exc:
        raise FirmwareIOError(f"qc report needs matplotlib ({exc.name} is missing): pip install "
                              "'qc-inspect[plant]'") from exc

    return run_report(a.db, a.out)
