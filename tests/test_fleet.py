"""A plant of many boxes (#30): collectors on PostgreSQL sharing the load, nothing lost when one is killed,
broken messages kept aside, schema versions, and the fleet view. Real PostgreSQL (Debian's, a throwaway
cluster) and Mosquitto 2, started here on loopback."""

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.postgres import Cluster
from edge.errors import QCError
from firmware_io.mqtt.broker import LocalBroker
from firmware_io.mqtt.client import MQTTTelemetry
from firmware_io.mqtt.collector import MAX_PAYLOAD, Collector
from firmware_io.mqtt.config import MQTTConfig
from firmware_io.mqtt.store import SCHEMA_VERSION, open_store
from qc.cli import main

from .test_mqtt import event, wait_for
from .test_pipeline import frames, make_runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pg():
    cluster = Cluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def database(pg, request, monkeypatch):
    """A fresh database in the cluster, its URL (no password: the environment has it)."""
    name = "t_" + request.node.name[:40].lower().replace("[", "_").replace("]", "")
    pg.psql(f"DROP DATABASE IF EXISTS {name}")
    pg.psql(f"CREATE DATABASE {name}")
    monkeypatch.setenv("PGPASSWORD", pg.password)
    return pg.url.rsplit("/", 1)[0] + "/" + name


def _collector(url, db, cid, env):
    return subprocess.Popen([sys.executable, "-m", "qc", "collect", "--mqtt", url, "--db", db, "--group", "plant",
                             "--id", cid], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_collectors_starting_together_on_an_empty_database_all_open_it(database, pg):
    """Each creates the tables in turn (CREATE TABLE IF NOT EXISTS from two sessions at once collides in
    PostgreSQL's catalogue); every one starts, and the schema is there once."""
    barrier, errors = threading.Barrier(6), []

    def collector():
        barrier.wait()
        try:
            open_store(database).close()
        except QCError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=collector) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert pg.psql("SELECT count(*), max(version) FROM qc_schema", database) == f"1|{SCHEMA_VERSION}"


def test_two_collectors_in_a_group_store_every_event_once_though_one_is_killed(pg, database, tmp_path):
    broker = LocalBroker(tmp_path / "broker").start()
    c1, c2 = (_collector(broker.url, database, cid, pg.env) for cid in ("c1", "c2"))
    assert wait_for(lambda: "inspections" in pg.psql("SELECT table_name FROM information_schema.tables", database),
                    timeout=60)
    time.sleep(1)  # both subscribed
    boxes = [MQTTTelemetry(MQTTConfig(url=broker.url, spool_path=tmp_path / f"spool{i}.sqlite"), "l1", f"s{i}")
             for i in range(3)]
    for i, box in enumerate(boxes):
        box.info({"station": f"s{i}", "line": "l1", "version": "0.1.0", "bundle": {"name": f"m{i}", "sha256": "ab" * 32},
                  "threshold": 0.5, "backend": "cpu", "camera": "aravis", "started": time.time()})
    sent = 0
    for n in range(2000):
        for i, box in enumerate(boxes):
            assert box.inspection(event(n, f"s{i}"))
            sent += 1
        if n == 600:  # one collector dies mid-run, mid-batch perhaps
            assert wait_for(lambda: int(pg.psql("SELECT count(*) FROM inspections", database)) > 300, timeout=60)
            c1.send_signal(signal.SIGKILL)
            c1.wait()
        if n == 1300:
            c1 = _collector(broker.url, database, "c1", pg.env)  # back with its id: its queue follows
    count = "SELECT count(*), count(DISTINCT id) FROM inspections"
    assert wait_for(lambda: pg.psql(count, database) == "6000|6000", timeout=120), pg.psql(count, database)
    for box in boxes:
        box.close()
    stored = []
    for c in (c1, c2):
        c.send_signal(signal.SIGTERM)
        out, err = c.communicate(timeout=60)
        assert c.returncode == 0, err[-2000:]
        stored.append(json.loads(out[out.index("{"):])["inspections"])
    assert all(stored) and sum(stored) <= 6000  # the group split the work (the killed one's part is not counted)
    assert pg.psql("SELECT count(*) FROM inspections WHERE station = 's2'", database) == "2000"
    # the fleet: every box with its model, and today's parts
    fleet = subprocess.run([sys.executable, "-m", "qc", "fleet", "--db", database, "--json"], cwd=ROOT, env=pg.env,
                           capture_output=True, text=True, check=True)
    rows = json.loads(fleet.stdout)
    assert [(b["station"], b["bundle"], b["parts"], b["yield_pct"]) for b in rows] == [
        ("s0", "m0", 2000, 100.0), ("s1", "m1", 2000, 100.0), ("s2", "m2", 2000, 100.0)]
    # the dashboard's views (deploy/fleet/views.sql) run on what the collectors made
    subprocess.run(["psql", database, "-v", "ON_ERROR_STOP=1", "-qf", str(ROOT / "deploy/fleet/views.sql")],
                   env=pg.env, check=True, capture_output=True)
    assert pg.psql("SELECT sum(parts) FROM qc_yield_per_minute", database) == "6000"
    assert pg.psql("SELECT count(*) FROM qc_fleet WHERE bundle IS NOT NULL", database) == "3"
    table = subprocess.run([sys.executable, "-m", "qc", "fleet", "--db", database], cwd=ROOT, env=pg.env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert table[0].split()[:4] == ["line", "station", "version", "bundle"] and len(table) == 4
    assert table[3].split()[:6] == ["l1", "s2", "0.1.0", "m2", "ab" * 6, "0.5000"] and "100.00 %" in table[3]
    report = subprocess.run([sys.executable, "-m", "qc", "report", "--db", database, "--station", "s1", "--out",
                             str(tmp_path / "r.html")], cwd=ROOT, env=pg.env, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["parts"] == 2000
    broker.stop()


def test_broken_messages_are_kept_aside_and_the_collector_goes_on(database, tmp_path):
    broker = LocalBroker(tmp_path / "broker").start()
    col = Collector(MQTTConfig(url=broker.url), database, client_id="c-bad").start()
    assert wait_for(col.connected.is_set)
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    wrong_types = event(1) | {"ts": "yesterday", "decision": "maybe"}
    for payload in (b"{not json", json.dumps(wrong_types).encode(), b'{"id": "' + b"x" * (1 << 20) + b'"}',
                    b"\xff\xfe", json.dumps(event(2)).encode()):
        pub.publish("qc/l1/s1/inspection", payload, qos=1).wait_for_publish(5)
    assert wait_for(lambda: col.counts["inspections"] == 1 and col.counts["bad"] == 4), col.counts
    col.stop()
    store = open_store(database, read_only=True)
    errors = [r[0] for r in store._execute("SELECT error FROM bad_messages ORDER BY received").fetchall()]
    lengths = [r[0] for r in store._execute("SELECT length(payload) FROM bad_messages").fetchall()]
    store.close()
    assert any("ts: Input should be a valid number" in e for e in errors), errors
    assert any("decision" in e for e in errors) and any(f"over the {MAX_PAYLOAD} allowed" in e for e in errors)
    assert max(lengths) <= 4096  # a huge payload is kept in part
    pub.loop_stop()
    broker.stop()


def test_schema_versions_an_old_file_is_migrated_a_newer_database_refused(pg, database, tmp_path, capsys):
    old = tmp_path / "v1.sqlite"
    with sqlite3.connect(old) as db:  # what qc collect wrote before versions
        db.execute("CREATE TABLE inspections (id TEXT PRIMARY KEY, topic TEXT, station TEXT, line TEXT, seq INTEGER, "
                   "ts REAL, label TEXT, score REAL, decision TEXT, reason TEXT, latency_ms REAL, model TEXT, payload TEXT)")
        db.execute("INSERT INTO inspections (id, station, line, ts, decision) VALUES ('a', 's1', 'l1', 1.0, 'pass')")
    store = open_store(old)
    assert store._execute("SELECT version FROM qc_schema").fetchone()[0] == SCHEMA_VERSION
    assert store.inspections() == [("s1", 1.0, None, "pass", None, None)]
    store.close()
    open_store(database).close()
    pg.psql(f"UPDATE qc_schema SET version = {SCHEMA_VERSION + 1}", database)
    with pytest.raises(QCError, match=f"schema version {SCHEMA_VERSION + 1} is newer than this qc-inspect's"):
        open_store(database)
    assert main(["fleet", "--db", database]) == 2
    assert f"version {SCHEMA_VERSION + 1} is newer" in capsys.readouterr().err
    with pytest.raises(QCError, match="PGPASSWORD or ~/.pgpass"):
        open_store(database.replace("qc@", "qc:secret@"))


def test_a_box_tells_the_fleet_what_it_runs(bundle_dir, synth32, tmp_path):
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=2), tmp_path)
    inv = tel.inventory
    assert inv["bundle"]["sha256"] == rt.bundle.sha256 and inv["camera"] == "folder" and inv["backend"] == "cpu"
    assert inv["threshold"] == rt.threshold and inv["started"] <= time.time()
    assert rt.command("threshold", {"value": 0.3})["ok"]
    assert tel.inventory["threshold"] == 0.3  # told again when it changes
