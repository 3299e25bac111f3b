"""Product changeover and the PLC handshake (#31): recipes switched between parts, each part decided by the
recipe it was captured under; the Trigger/Ready/OK/NG signals on the simulated GPIO, on a manual clock."""

import json
import shutil
import threading
import time

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.app import build_runtime
from edge.config import validate_config
from edge.errors import QCError
from edge.station import Station, load_operators, token_line
from edge.telemetry import MemoryTelemetry
from firmware_io.gpio import ManualClock
from firmware_io.mqtt.broker import LocalBroker

from .conftest import write_card
from .test_mqtt import Listener, wait_for
from .test_pipeline import check_one_decision_each, frames, make_flaky, make_runtime


@pytest.fixture
def bundles(bundle_dir, tmp_path):
    """bundles_dir with two products' bundles, `plain` and `ribbed` (the same model under another name)."""
    root = tmp_path / "bundles"
    for name in ("plain", "ribbed"):
        shutil.copytree(bundle_dir, root / name)
        card = json.loads((root / name / "model.json").read_text())
        write_card(root / name, card | {"name": name})
    return root


RECIPES = {"plain": {"bundle": "plain", "index": 1, "threshold": 0.9},
           "ribbed": {"bundle": "ribbed", "index": 2, "threshold": 0.2, "gate_delay_ms": 1500, "gate_pulse_ms": 7},
           "broken": {"bundle": "missing", "index": 3}}


def _line(bundle_dir, bundles, synth32, tmp_path, n=60, **over):
    return make_runtime(bundle_dir, frames(synth32, tmp_path, n=n), tmp_path, bundles_dir=str(bundles),
                        recipes=RECIPES, recipe="plain", source__rate_hz=100, **over)


def test_a_changeover_under_a_running_line_decides_each_part_by_the_recipe_it_was_captured_under(
        bundle_dir, bundles, synth32, tmp_path):
    rt, tel = _line(bundle_dir, bundles, synth32, tmp_path, n=60, pipeline__workers=1, pipeline__queue_size=64)
    make_flaky(rt, delay=0.02)  # the worker lags the camera: parts wait in the queue across the changeover
    marks = {}

    def operator():
        assert wait_for(lambda: rt._captured >= 20, timeout=30)
        marks["captured"], marks["decided"] = rt._captured, len(tel.inspections)
        marks["reply"] = rt.command("recipe", {"name": "ribbed"})
        marks["after"] = rt._captured
        marks["unknown"] = rt.command("recipe", {"name": "dented"})
        marks["broken"] = rt.command("recipe", {"name": "broken"})

    t = threading.Thread(target=operator)
    t.start()
    rt.run(on_stats=lambda line: None)
    t.join()
    check_one_decision_each(tel, 60)
    assert marks["reply"]["ok"] and marks["reply"]["recipe"] == "ribbed" and marks["reply"]["threshold"] == 0.2
    assert marks["decided"] < marks["captured"]  # parts captured under `plain` were still waiting
    events = sorted(tel.inspections, key=lambda e: e["seq"])
    recipes = [e["recipe"] for e in events]
    switch = recipes.index("ribbed")
    assert set(recipes[:switch]) == {"plain"} and set(recipes[switch:]) == {"ribbed"}
    assert marks["captured"] - 1 <= switch <= marks["after"]
    assert {(e["model"]["name"], e["threshold"]) for e in events[:switch]} == {("plain", 0.9)}
    assert {(e["model"]["name"], e["threshold"]) for e in events[switch:]} == {("ribbed", 0.2)}
    # an unknown or broken recipe changes nothing, and says so
    assert not marks["unknown"]["ok"] and "no recipe 'dented'" in marks["unknown"]["error"]
    assert not marks["broken"]["ok"] and "no bundle 'missing'" in marks["broken"]["error"]
    failed = [a for a in tel.alarms if a["kind"] == "recipe_failed"]
    assert len(failed) == 2 and "ribbed runs on" in failed[0]["message"]
    assert rt.model.recipe == "ribbed" and rt.stats.snapshot()["counts"].get("changeovers") == 1
    assert tel.inventory["recipe"] == "ribbed" and tel.inventory["bundle"]["name"] == "ribbed"


def test_a_recipe_times_the_gate_and_a_commanded_threshold_lasts_until_the_next_changeover(
        bundle_dir, bundles, synth32, tmp_path):
    rt, tel = _line(bundle_dir, bundles, synth32, tmp_path, n=4, decision__class_thresholds={})
    reply = rt.command("threshold", {"value": 0.5})
    assert reply["ok"] and reply["recipe"] == "plain" and "until the next changeover" in reply["note"]
    assert rt.command("recipe", {"name": "ribbed"})["threshold"] == 0.2  # the recipe's, not the commanded one
    now = rt.clock.now()
    sched = rt.gate.schedule(now, **rt.model.gate)
    assert not sched.late and sched.at == pytest.approx(now + 1.5)
    assert rt.gate.queues[0][-1] == (pytest.approx(now + 1.5), pytest.approx(0.007))
    rt.gate.safe()
    assert rt.command("recipe", {"name": "ribbed", "path": "/etc"})["ok"] is False  # a name, nothing else


def test_recipes_are_checked_with_the_config():
    base = {"bundle": "b", "bundles_dir": "bundles"}
    with pytest.raises(QCError, match="recipes name bundles in bundles_dir"):
        validate_config({"bundle": "b", "recipes": {"a": {"bundle": "x"}}})
    with pytest.raises(QCError, match=r"'\.\./x' is not a plain folder name"):
        validate_config(base | {"recipes": {"a": {"bundle": "../x"}}})
    with pytest.raises(QCError, match="recipes a and b both have index 1"):
        validate_config(base | {"recipes": {"a": {"bundle": "x", "index": 1}, "b": {"bundle": "y", "index": 1}}})
    with pytest.raises(QCError, match=r"recipe 'c' is not one of recipes \['a'\]"):
        validate_config(base | {"recipes": {"a": {"bundle": "x"}}, "recipe": "c"})
    with pytest.raises(QCError, match="source.kind folder cannot change"):
        validate_config(base | {"recipes": {"a": {"bundle": "x", "exposure_us": 500}}})


def test_a_changeover_from_the_station_and_over_mqtt(bundle_dir, bundles, synth32, tmp_path, monkeypatch):
    monkeypatch.delenv("QC_WEB_TOKEN", raising=False)
    broker = LocalBroker(tmp_path / "broker").start()
    operators = tmp_path / "operators"
    operators.write_text(token_line("alice", "alice-secret") + "\n")
    cfg = validate_config({"bundle": str(bundle_dir), "bundles_dir": str(bundles), "recipes": RECIPES,
                           "recipe": "plain", "store": {"dir": None}, "web": {"port": 0}, "gpio": {"backend": "sim"},
                           "source": {"kind": "folder", "path": str(frames(synth32, tmp_path, n=4)), "loop": True,
                                      "rate_hz": 20},
                           "mqtt": {"enabled": True, "url": broker.url, "commands": True,
                                    "spool_path": str(tmp_path / "spool.sqlite")}})
    rt = build_runtime(cfg)
    station = Station(rt, cfg.web, load_operators(operators)).start()
    runner = threading.Thread(target=rt.run, kwargs={"on_stats": lambda line: None})
    runner.start()
    try:
        with httpx.Client(base_url=station.url.rstrip("/"), timeout=10) as http:
            assert http.get("/api/state").json()["recipes"] == ["plain", "ribbed", "broken"]
            assert http.post("/api/command/recipe", json={"name": "ribbed"}).status_code == 401
            r = http.post("/api/command/recipe", json={"name": "ribbed"}, headers={"Authorization": "Bearer alice-secret"})
            assert r.json()["recipe"] == "ribbed" and http.get("/api/state").json()["recipe"] == "ribbed"
        listener = Listener(broker.port, "qc/line1/station1/cmd/recipe/result")
        info = Listener(broker.port, "qc/line1/station1/info")
        assert wait_for(lambda: rt.telemetry.connected.is_set())
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("qc/line1/station1/cmd/recipe", json.dumps({"name": "plain"}), qos=1).wait_for_publish(5)
        assert wait_for(lambda: listener.msgs)
        assert json.loads(listener.msgs[0][1]) | {"sha256": None} == {
            "ok": True, "recipe": "plain", "model": "plain", "sha256": None, "threshold": 0.9}
        assert wait_for(lambda: info.msgs and json.loads(info.msgs[-1][1])["recipe"] == "plain")
        pub.loop_stop()
        listener.stop()
        info.stop()
    finally:
        rt.stop_event.set()
        runner.join(30)
        station.stop()
        rt.telemetry.close()
        broker.stop()


def test_a_box_starts_with_its_recipe(bundle_dir, bundles, synth32, tmp_path):
    rt, _ = _line(bundle_dir, bundles, synth32, tmp_path, n=2)
    assert (rt.model.recipe, rt.bundle.name, rt.threshold) == ("plain", "plain", 0.9)
    assert isinstance(rt.telemetry, MemoryTelemetry) and time.time() >= rt.started


PLC = {"trigger": 20, "result_ack": 21, "recipe_bits": [22, 23], "recipe_strobe": 24, "ready": 5, "busy": 6,
       "result_ready": 13, "ok": 19, "ng": 26, "error": 12, "ack_timeout_ms": 500, "debounce_ms": 0}


@pytest.fixture
def plc_line(bundle_dir, bundles, synth32, tmp_path):
    """A box run by a PLC over the simulated GPIO on a manual clock; the line's frames from a looping folder."""
    clock = ManualClock()
    cfg = validate_config({"bundle": str(bundle_dir), "bundles_dir": str(bundles), "recipes": RECIPES,
                           "recipe": "plain", "store": {"dir": None}, "web": {"enabled": False},
                           "trigger": {"mode": "plc", "frame_timeout_ms": 200},
                           "gpio": {"backend": "sim", "plc": PLC},
                           "source": {"kind": "folder", "path": str(frames(synth32, tmp_path, n=6)), "loop": True}})
    tel = MemoryTelemetry()
    rt = build_runtime(cfg, telemetry=tel, clock=clock)
    runner = threading.Thread(target=rt.run, kwargs={"on_stats": lambda line: None})
    runner.start()
    assert wait_for(rt.running.is_set)
    yield rt, tel, rt.gpio, clock
    rt.stop_event.set()
    runner.join(30)


def _levels(gpio, *names):
    return tuple(gpio.read(PLC[n]) for n in names)


def _cycle(gpio, ack=True):
    """One part as a PLC runs it: trigger, wait for the result, read it, acknowledge. Returns (ok, ng, error)."""
    assert gpio.read(PLC["ready"]) == 1
    gpio.drive(PLC["trigger"], 1)
    assert _levels(gpio, "ready", "busy") == (0, 1)  # at once, on the trigger's edge
    assert wait_for(lambda: gpio.read(PLC["result_ready"]) == 1, timeout=30)
    result = _levels(gpio, "ok", "ng", "error")
    assert gpio.read(PLC["busy"]) == 0
    gpio.drive(PLC["trigger"], 0)
    if ack:
        gpio.drive(PLC["result_ack"], 1)
        assert _levels(gpio, "result_ready", "ok", "ng", "ready") == (0, 0, 0, 1)
        gpio.drive(PLC["result_ack"], 0)
    return result


def test_the_plc_handshake_runs_trigger_busy_result_ack_ready_in_order(plc_line):
    rt, tel, gpio, clock = plc_line
    start = len(gpio.changes)
    ok, ng, error = _cycle(gpio)
    assert ok + ng == 1 and error == 0
    pins = {v: k for k, v in PLC.items() if isinstance(v, int)}
    seq = [(pins[c.pin], c.level) for c in gpio.changes[start:] if c.pin in pins]
    result = ("ok" if ok else "ng", 1)
    assert seq == [("ready", 0), ("busy", 1), result, ("busy", 0), ("result_ready", 1),
                   (result[0], 0), ("result_ready", 0), ("ready", 1)]
    assert len(tel.inspections) == 1 and tel.inspections[0]["decision"] == ("pass" if ok else "reject")


def test_a_missing_ack_a_trigger_while_busy_and_a_model_error(plc_line):
    rt, tel, gpio, clock = plc_line
    _cycle(gpio, ack=False)  # the PLC never acknowledges
    clock.advance(0.499)
    assert gpio.read(PLC["result_ready"]) == 1
    clock.advance(0.002)
    assert _levels(gpio, "result_ready", "ok", "ng", "error", "ready") == (0, 0, 0, 1, 1)
    assert [a["kind"] for a in tel.alarms] == ["plc_ack_timeout"]
    make_flaky(rt, delay=0.3, fail_on={1})  # the next inference is slow, and fails
    gpio.drive(PLC["trigger"], 1)
    assert gpio.read(PLC["error"]) == 0  # an accepted trigger clears the last error
    gpio.drive(PLC["trigger"], 0)
    gpio.drive(PLC["trigger"], 1)  # again, while busy: refused
    assert gpio.read(PLC["error"]) == 1 and tel.alarms[-1]["kind"] == "plc_trigger_refused"
    assert wait_for(lambda: gpio.read(PLC["result_ready"]) == 1, timeout=30)
    assert _levels(gpio, "ok", "ng", "error") == (0, 1, 1)  # fail-safe: ng and error
    gpio.drive(PLC["trigger"], 0)
    gpio.drive(PLC["result_ack"], 1)
    gpio.drive(PLC["result_ack"], 0)
    assert len(tel.inspections) == 2 and tel.inspections[-1]["reason"] == "failsafe"  # one part, not two


def test_the_plc_changes_the_recipe_by_its_index(plc_line):
    rt, tel, gpio, clock = plc_line
    gpio.drive(PLC["recipe_bits"][1], 1)  # index 2: ribbed
    gpio.drive(PLC["recipe_strobe"], 1)
    assert _levels(gpio, "ready", "busy") == (0, 1)
    assert wait_for(lambda: gpio.read(PLC["ready"]) == 1, timeout=30)
    assert rt.model.recipe == "ribbed" and gpio.read(PLC["error"]) == 0
    gpio.drive(PLC["recipe_strobe"], 0)
    _cycle(gpio)
    assert tel.inspections[-1]["recipe"] == "ribbed"
    gpio.drive(PLC["recipe_bits"][0], 1)  # index 3: a recipe whose bundle is missing
    gpio.drive(PLC["recipe_strobe"], 1)
    assert wait_for(lambda: gpio.read(PLC["ready"]) == 1, timeout=30)
    assert gpio.read(PLC["error"]) == 1 and rt.model.recipe == "ribbed"
    assert tel.alarms[-1]["kind"] == "recipe_failed"


def test_a_recipe_sets_the_cameras_exposure_before_its_first_part(bundle_dir, bundles, tmp_path):
    from .test_cameras import FreeRunning

    class Exposed(FreeRunning):  # the stand-in camera, recording what it is set to
        def __init__(self):
            super().__init__()
            self.set = []

        def _apply_exposure(self):
            self.set.append((self.cfg.exposure_us, self.cfg.gain))

    cam = Exposed()
    recipes = RECIPES | {"ribbed": RECIPES["ribbed"] | {"exposure_us": 1200, "gain": 2.0}}
    rt, tel = make_runtime(bundle_dir, tmp_path, tmp_path, cam, bundles_dir=str(bundles), recipes=recipes,
                           source={"kind": "aravis"})
    cam.open(5)
    assert rt.command("recipe", {"name": "ribbed"})["ok"]
    assert cam.set == [(1200, 2.0)] and cam.cfg.exposure_us == 1200  # and kept for a reopen
    cam.close()
