"""MQTT against a real broker: store-and-forward, outages, kill -9, bad credentials, silent brokers, commands."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_io.mqtt.broker import MOSQUITTO
from firmware_io.mqtt.broker import LocalBroker as Broker
from firmware_io.mqtt.client import MQTTTelemetry
from firmware_io.mqtt.collector import Collector
from firmware_io.mqtt.config import MQTTConfig
from firmware_io.mqtt.spool import Spool, SpoolFull

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def cfg(url, tmp_path, **kw):
    return MQTTConfig(url=url, spool_path=tmp_path / "spool.sqlite", reconnect_min_s=0.5, reconnect_max_s=1, **kw)


def wait_for(cond, timeout=20.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def event(i, station="s1"):
    return {"id": f"{station}-boot-{i:06d}", "seq": i, "ts": time.time(), "station": station, "line": "l1",
            "label": "good", "score": 0.1, "scores": {}, "decision": "pass", "reason": "ok", "latency_ms": 3.0,
            "model": {"name": "m", "sha256": "x"}}


def ids_in(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("SELECT id FROM inspections")]


class Listener:
    def __init__(self, url_port, topic):
        self.msgs = []
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.c.on_message = lambda c, u, m: self.msgs.append((m.topic, m.payload, m.retain))
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self.c.connect("127.0.0.1", url_port)
        self.c.loop_start()

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_events_status_stats_and_alarms_reach_the_broker(broker, tmp_path):
    listener = Listener(broker.port, "qc/#")
    tel = MQTTTelemetry(cfg(broker.url, tmp_path), "l1", "s1")
    assert wait_for(tel.connected.is_set)
    for i in range(20):
        tel.inspection(event(i))
    tel.stats({"fps": 1.0})
    tel.alarm("camera_lost", "test")
    assert wait_for(lambda: len(tel.spool) == 0)
    assert wait_for(lambda: sum(t.endswith("/inspection") for t, _, _ in listener.msgs) == 20)
    topics = {t for t, _, _ in listener.msgs}
    assert {"qc/l1/s1/status", "qc/l1/s1/stats", "qc/l1/s1/alarm", "qc/l1/s1/inspection"} <= topics
    seqs = [json.loads(p)["seq"] for t, p, _ in listener.msgs if t.endswith("/inspection")]
    assert seqs == list(range(20))  # in order
    tel.close()
    listener.stop()
    late = Listener(broker.port, "qc/l1/s1/status")  # retained: a newcomer sees the last word
    assert wait_for(lambda: late.msgs) and late.msgs[-1][1:] == (b"offline", True)
    late.stop()


@pytest.mark.skipif(MOSQUITTO is None, reason="needs Mosquitto with persistence (.ci/run installs it)")
def test_broker_outage_loses_nothing(tmp_path):
    broker = Broker(tmp_path / "b").start()
    col = Collector(MQTTConfig(url=broker.url), tmp_path / "t.sqlite").start()
    tel = MQTTTelemetry(cfg(broker.url, tmp_path), "l1", "s1")
    assert wait_for(lambda: tel.connected.is_set() and col.connected.is_set())
    sent = 0
    for _ in range(40):  # before the outage
        tel.inspection(event(sent))
        sent += 1
    assert wait_for(lambda: len(tel.spool) == 0)
    broker.stop()
    assert wait_for(lambda: not tel.connected.is_set())
    for _ in range(60):  # parts keep coming while the broker is away for several seconds
        tel.inspection(event(sent))
        sent += 1
        time.sleep(0.05)
    assert len(tel.spool) >= 60
    broker.start()
    assert wait_for(lambda: len(set(ids_in(tmp_path / "t.sqlite"))) == sent, timeout=40), \
        (tel.counts, col.counts, len(tel.spool), tel.connected.is_set(), col.connected.is_set()) or \
        f"{len(set(ids_in(tmp_path / 't.sqlite')))} of {sent}"
    assert len(ids_in(tmp_path / "t.sqlite")) == sent  # exactly once after deduplication
    tel.close()
    col.stop()
    broker.stop()


def test_edge_killed_with_sigkill_delivers_its_spool_on_restart(tmp_path, bundle_dir, synth32):
    broker = Broker(tmp_path / "b")  # down while the first process runs: everything stays spooled
    spool = tmp_path / "spool.sqlite"
    config = tmp_path / "edge.yaml"
    config.write_text(json.dumps({
        "bundle": str(bundle_dir), "stats_interval_s": 0.5, "store": {"dir": None}, "web": {"port": 0},
        "source": {"kind": "folder", "path": str(synth32 / "test"), "loop": True, "rate_hz": 40},
        "mqtt": {"enabled": True, "url": broker.url, "spool_path": str(spool), "reconnect_min_s": 0.5,
                 "reconnect_max_s": 1}}))
    events1 = tmp_path / "events1.jsonl"
    cmd = [sys.executable, "-m", "qc", "run", "--config", str(config)]
    proc = subprocess.Popen(cmd + ["--events", str(events1)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: events1.exists() and len(events1.read_text().splitlines()) >= 30, timeout=60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [json.loads(line)["id"] for line in events1.read_text().splitlines() if line.endswith("}")]
    waiting = Spool(spool)  # the killed process's lock went with it
    assert waiting.after(0, 10_000), "events should be waiting in the spool"
    waiting.close()
    broker.start()
    col = Collector(MQTTConfig(url=broker.url), tmp_path / "t.sqlite").start()
    assert wait_for(col.connected.is_set)
    proc2 = subprocess.run(cmd + ["--max-parts", "5", "--events", str(tmp_path / "events2.jsonl")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert proc2.returncode == 0, proc2.stderr
    after = [json.loads(line)["id"] for line in (tmp_path / "events2.jsonl").read_text().splitlines()]
    got = set(ids_in(tmp_path / "t.sqlite"))
    assert wait_for(lambda: set(before + after) <= set(ids_in(tmp_path / "t.sqlite")), timeout=30), \
        f"missing {len(set(before + after) - got)}"
    col.stop()
    broker.stop()


@pytest.mark.skipif(MOSQUITTO is None, reason="password authentication is tested on Mosquitto")
def test_bad_credentials_are_an_error_never_connected(tmp_path):
    broker = Broker(tmp_path / "b", users={"edge": "right"}).start()
    os.environ["QC_TEST_PW"] = "wrong"
    err = open(tmp_path / "log.txt", "w")
    tel = MQTTTelemetry(cfg(f"mqtt://edge@127.0.0.1:{broker.port}", tmp_path, password_env="QC_TEST_PW"), "l1", "s1",
                        log_stream=err)
    assert wait_for(lambda: tel.refused is not None)
    assert not tel.connected.is_set()
    tel.inspection(event(1))
    time.sleep(0.3)
    kinds = [row.kind for row in tel.spool.after(0, 10)]
    assert kinds.count("inspection") == 1  # kept for when the credentials are fixed
    assert kinds.count("alarm") == 1  # mqtt_connect_failed, said once however often the broker refuses
    tel.close(timeout=0.5)
    err.close()
    assert "refused by the broker" in (tmp_path / "log.txt").read_text()
    broker.stop()


def test_broker_that_never_answers(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)  # accepts TCP, never speaks MQTT
    port = server.getsockname()[1]
    tel = MQTTTelemetry(cfg(f"mqtt://127.0.0.1:{port}", tmp_path, keepalive_s=5), "l1", "s1",
                        log_stream=open(os.devnull, "w"))
    for i in range(10):
        tel.inspection(event(i))
    time.sleep(1.0)
    assert not tel.connected.is_set() and [r.kind for r in tel.spool.after(0, 100)].count("inspection") == 10
    t0 = time.monotonic()
    tel.close(timeout=1.0)
    assert time.monotonic() - t0 < 10
    kept = Spool(tmp_path / "spool.sqlite")
    assert [r.kind for r in kept.after(0, 100)].count("inspection") == 10  # nothing lost
    kept.close()
    server.close()


def test_garbage_on_command_topics(broker, tmp_path):
    state = {"threshold": 0.5}

    def handler(name, payload):
        if name != "threshold":
            return {"ok": False, "error": f"unknown command '{name}'"}
        v = payload.get("value")
        if not isinstance(v, float):
            return {"ok": False, "error": "bad value"}
        state["threshold"] = v
        return {"ok": True}

    tel = MQTTTelemetry(cfg(broker.url, tmp_path, max_command_bytes=100, commands=True), "l1", "s1")
    tel.on_command(handler)
    listener = Listener(broker.port, "qc/l1/s1/cmd/+/result")
    assert wait_for(tel.connected.is_set)
    time.sleep(0.3)
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    for topic, payload in [("threshold", b"\xff\xfe not utf8"), ("threshold", b"{not json"),
                           ("threshold", b"[1, 2]"), ("threshold", b"{" + b" " * 200 + b"}"),
                           ("explode", b"{}"), ("threshold", b'{"value": 0.25}')]:
        pub.publish(f"qc/l1/s1/cmd/{topic}", payload, qos=1).wait_for_publish(5)
    assert wait_for(lambda: len(listener.msgs) == 6)
    replies = [json.loads(p) for _, p, _ in listener.msgs]
    assert [r["ok"] for r in replies] == [False, False, False, False, False, True]
    assert "UTF-8 JSON" in replies[0]["error"] and "exceeds 100" in replies[3]["error"]
    assert state["threshold"] == 0.25
    pub.loop_stop()
    listener.stop()
    tel.close()


def test_spool_survives_reopen_and_honours_its_policy(tmp_path):
    s = Spool(tmp_path / "s.sqlite", capacity=10)
    for i in range(6):
        s.put("t/inspection", str(i).encode(), 1, False, "inspection")
    for _ in range(4):
        s.put("t/stats", b"{}", 0, True, "stats")
    s.put("t/inspection", b"6", 1, False, "inspection")  # full: the oldest stats goes
    assert len(s) == 10 and s.dropped == 1
    for _ in range(3):
        s.put("t/inspection", b"x", 1, False, "inspection")
    with pytest.raises(SpoolFull):
        s.put("t/inspection", b"y", 1, False, "inspection")  # never an inspection event, by default
    s.close()
    again = Spool(tmp_path / "s.sqlite", capacity=10)
    rows = again.after(0, 100)
    assert len(again) == 10 and [r.payload for r in rows[:7]] == [b"0", b"1", b"2", b"3", b"4", b"5", b"6"]


def test_collect_and_report_commands(broker, tmp_path):
    from qc.cli import main

    db = tmp_path / "t.sqlite"
    collector = subprocess.Popen([sys.executable, "-m", "qc", "collect", "--mqtt", broker.url, "--db", str(db),
                                  "--duration", "6"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert "collecting qc/#" in collector.stdout.readline()
    time.sleep(0.5)
    tel = MQTTTelemetry(cfg(broker.url, tmp_path), "l1", "s1")
    for i in range(30):
        e = event(i)
        if i % 3 == 0:
            e.update(decision="reject", reason="defect", label="scratch" if i % 2 else "spot")
        tel.inspection(e)
    tel.inspection(event(0))  # a duplicate
    tel.alarm("late", "x")
    assert wait_for(lambda: len(tel.spool) == 0)
    tel.close()
    out, _ = collector.communicate(timeout=20)
    assert collector.returncode == 0 and '"duplicates": 1' in out
    assert sorted(ids_in(db)) == sorted({event(i)["id"] for i in range(30)})
    out = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("data:image/png;base64,") >= 3 and "s1" in page and "late" in page
