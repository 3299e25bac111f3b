"""How many events a second the plant side stores (#30): one `qc collect` on PostgreSQL, one on SQLite, and two
in a share group on PostgreSQL, each against `mosquitto_sub` writing to /dev/null in the same run (the
broker's own rate with the same publisher). A publisher sends N inspection events (QoS 1) as fast as the
broker takes them; a variant's rate is N over the time from the first publish until the last event is
stored (counted in the database) or received. Everything runs on this machine's cores: the broker, the
database, the publisher and the collectors share them.

    python -m bench.collector [--events 20000]

Goal: one collector keeps up with 50 stations at 20 parts/s (1,000 events/s) on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.postgres import Cluster
from bench.record import emit
from firmware_io.mqtt.broker import MOSQUITTO, LocalBroker

GOAL = 1000.0
ROOT = Path(__file__).resolve().parents[1]


def _events(root: str, n: int, stations: int = 50) -> list[tuple[str, bytes]]:
    now = time.time()
    return [(f"{root}/l1/s{i % stations}/inspection", json.dumps({
        "id": f"{root}-s{i % stations}-{i:07d}", "seq": i, "ts": now + i * 1e-3, "station": f"s{i % stations}",
        "line": "l1", "label": "good", "score": 0.01, "scores": {"good": 0.99}, "decision": "pass", "reason": "ok",
        "latency_ms": 4.2, "model": {"name": "bench", "sha256": "ab" * 32}}).encode()) for i in range(n)]


def _publish(port: int, events: list[tuple[str, bytes]]) -> float:
    """Publish everything (QoS 1); returns when the first went out."""
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    c.max_inflight_messages_set(200)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.monotonic()
    infos = [c.publish(topic, payload, qos=1) for topic, payload in events]
    infos[-1].wait_for_publish(120)
    c.loop_stop()
    c.disconnect()
    return t0


def _until(count, n: int, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count() >= n:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"only {count()} of {n} events stored in {timeout:.0f} s")


def _collectors(broker: LocalBroker, db: str, root: str, ids: list[str], env=None) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-m", "qc", "collect", "--mqtt", broker.url, "--db", db, "--root", root,
                               "--id", cid] + (["--group", "bench"] if len(ids) > 1 else []), cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for cid in ids]
    time.sleep(3)  # connected and subscribed (the database made first)
    return procs


def _stop(procs) -> None:
    for p in procs:
        p.terminate()
        p.wait(30)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20_000)
    a = p.parse_args(argv)
    if MOSQUITTO is None:
        raise SystemExit("needs Mosquitto (apt-get install mosquitto mosquitto-clients)")
    work = Path(tempfile.mkdtemp(prefix="qc-bench-collector-"))
    broker = LocalBroker(work / "broker").start()
    pg = Cluster().start()
    n, rates = a.events, {}
    try:
        sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "raw/#", "-q", "1",
                                "-C", str(n)], stdout=subprocess.DEVNULL)
        time.sleep(1)
        t0 = _publish(broker.port, _events("raw", n))
        sub.wait(300)
        rates["mosquitto_sub"] = n / (time.monotonic() - t0)
        for name, db, ids, count in (
                ("sqlite_one", str(work / "t.sqlite"), ["c1"], None),
                ("postgresql_one", pg.url.rsplit("/", 1)[0] + "/one", ["c1"], "one"),
                ("postgresql_two_shared", pg.url.rsplit("/", 1)[0] + "/two", ["c1", "c2"], "two")):
            if count:
                pg.psql(f"CREATE DATABASE {count}")
            root = name.replace("_", "")
            procs = _collectors(broker, db, root, ids, pg.env)
            if count:
                def stored(url=db):
                    return int(pg.psql("SELECT count(*) FROM inspections", url) or 0)
            else:
                def stored(path=db):
                    with sqlite3.connect(path) as con:
                        return con.execute("SELECT count(*) FROM inspections").fetchone()[0]
            t0 = _publish(broker.port, _events(root, n))
            rates[name] = n / (_until(stored, n) - t0)
            _stop(procs)
    finally:
        pg.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    rates = {k: round(v, 1) for k, v in rates.items()}
    result = {"module": "bench.collector", "benchmark": "collector", "events": n, "events_per_s": rates,
              "two_over_one": round(rates["postgresql_two_shared"] / rates["postgresql_one"], 3),
              "goal_events_per_s": GOAL, "meets_target": rates["postgresql_one"] >= GOAL}
    return emit(result)


if __name__ == "__main__":
    main()
