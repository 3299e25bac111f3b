"""Telemetry throughput: events/s through the spooled client (spool on, every event on disk until the
broker's PUBACK) against paho publishing the same events directly at QoS 1 with no spool, in the same run,
on the same broker (Mosquitto when installed, else the embedded amqtt). Then an outage: events published
while the broker is down, all counted at a subscriber after it returns."""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.record import emit  # noqa: E402
from firmware_io.mqtt.broker import LocalBroker as Broker  # noqa: E402
from firmware_io.mqtt.client import MQTTTelemetry  # noqa: E402
from firmware_io.mqtt.config import MQTTConfig  # noqa: E402


def _event(i: int) -> dict:
    return {"id": f"bench-{i:08d}", "seq": i, "ts": time.time(), "label": "good", "score": 0.01,
            "scores": {"good": 0.99, "scratch": 0.01}, "decision": "pass", "reason": "ok", "latency_ms": 4.2,
            "model": {"name": "bench", "sha256": "0" * 64}}


class Counter:
    def __init__(self, port: int, topic: str):
        self.ids: set[str] = set()
        self.ready = threading.Event()
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-sub",
                             clean_session=False)
        self.c.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, 1), self.ready.set())
        self.c.on_message = lambda c, u, m: self.ids.add(json.loads(m.payload)["id"])
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.ready.wait(10)


def run_spooled(url: str, tmp: Path, n: int, sync: str) -> float:
    tel = MQTTTelemetry(MQTTConfig(url=url, spool_path=tmp / f"spool-{sync}.sqlite", spool_max_events=10 * n,
                                   spool_sync=sync), "b", "s1", log_stream=open("/dev/null", "w"))
    tel.connected.wait(10)
    t0 = time.perf_counter()
    for i in range(n):
        tel.inspection(_event(i))
    while len(tel.spool):
        time.sleep(0.001)
    elapsed = time.perf_counter() - t0
    tel.close()
    return n / elapsed


def run_direct(port: int, n: int) -> float:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-direct")
    c.max_inflight_messages_set(64)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    infos = [c.publish("qc/b/s2/inspection", json.dumps(_event(i)), qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(30)
    elapsed = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return n / elapsed


def run_outage(broker: Broker, tmp: Path, n: int) -> dict:
    counter = Counter(broker.port, "qc/b/s3/inspection")
    tel = MQTTTelemetry(MQTTConfig(url=broker.url, spool_path=tmp / "outage.sqlite", reconnect_max_s=1), "b", "s3",
                        log_stream=open("/dev/null", "w"))
    tel.connected.wait(10)
    broker.stop()
    for i in range(n):
        tel.inspection(_event(i))
    spooled = len(tel.spool)
    broker.start()
    deadline = time.monotonic() + 60
    while len(counter.ids) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    tel.close()
    return {"sent_while_down": n, "spooled": spooled, "delivered_unique": len(counter.ids), "lost": n - len(counter.ids)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=5000)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker = Broker(tmp / "broker").start()
        try:
            direct = run_direct(broker.port, a.events)
            spooled = run_spooled(broker.url, tmp, a.events, "full")
            spooled_normal = run_spooled(broker.url, tmp, a.events, "normal")
            outage = run_outage(broker, tmp, min(1000, a.events))
        finally:
            broker.stop()
    result = {"module": "bench.telemetry", "benchmark": "telemetry", "broker": broker.kind, "events": a.events,
              "spooled_events_per_s": round(spooled, 1), "baseline_paho_direct_events_per_s": round(direct, 1),
              "spool_cost": round(1 - spooled / direct, 3),
              "spooled_sync_normal_events_per_s": round(spooled_normal, 1),
              "spool_cost_sync_normal": round(1 - spooled_normal / direct, 3), "outage": outage,
              "target": {"spool_cost_max": 0.30, "spooled_events_per_s_min": 1000}}
    result["meets_target"] = result["spool_cost"] <= 0.30 and spooled >= 1000 and outage["lost"] == 0
    return emit(result)


if __name__ == "__main__":
    main()
