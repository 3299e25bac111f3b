"""The edge runtime with a tiny bundle on the simulated GPIO: one decision per part, fail-safe paths."""

import itertools
import json
import os
import shutil
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from edge.app import build_runtime
from edge.config import load_config, validate_config
from edge.errors import QCError
from edge.store import review
from edge.telemetry import MemoryTelemetry

from .conftest import write_card


def make_runtime(bundle_dir, source_dir, tmp_path, camera=None, **over):
    """A runtime on a paced folder source (or `camera`, a stand-in LiveSource), its settings overridden by
    `section__key=value`."""
    # paced, so that a loaded CI machine does not overflow the queue unless a test wants it to
    values = {"bundle": str(bundle_dir), "source": {"kind": "folder", "path": str(source_dir), "rate_hz": 200},
              "store": {"dir": str(tmp_path / "rejects")}, "stats_interval_s": 0.2,
              "gpio": {"gate": {"delay_ms": 2000, "pulse_ms": 2, "min_gap_ms": 0}}}
    for key, value in over.items():
        node = values
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    tel = MemoryTelemetry()
    return build_runtime(validate_config(values), telemetry=tel, source=camera), tel


def frames(synth32, tmp_path, n=12):
    src = tmp_path / "frames"
    src.mkdir()
    files = sorted((synth32 / "train").glob("*/*.png"))[:n]
    assert len(files) == n
    for i, f in enumerate(files):
        shutil.copy(f, src / f"{i:03d}.png")
    return src


def check_one_decision_each(tel, n):
    seqs = [e["seq"] for e in tel.inspections]
    assert sorted(seqs) == list(range(n))
    assert len({e["id"] for e in tel.inspections}) == n
    for e in tel.inspections:
        assert e["decision"] in ("pass", "reject") and e["reason"]


def test_every_part_gets_exactly_one_decision(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path)
    rt, tel = make_runtime(bundle_dir, src, tmp_path, decision__threshold=0.5, source__rate_hz=100)
    final = rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 12)
    assert final["counts"]["parts"] == 12
    rejects = [e for e in tel.inspections if e["decision"] == "reject"]
    assert final["counts"]["decision"].get("reject", 0) == len(rejects)
    # every reject fired the gate once (drained on stop), and was saved for review with its box
    assert rt.gate.counts["fired"] == len(rejects) and len(rt.gpio.pulses(17)) == len(rejects)
    assert len(list((tmp_path / "rejects").glob("*.json"))) == len(rejects)
    for e in rejects:
        x, y, w, h = e["box"]
        assert 0 <= x and 0 <= y and x + w <= 32 and y + h <= 32
    assert tel.stats_ and tel.stats_[-1]["counts"]["parts"] == 12
    stages = final["latency_ms"]  # per stage, so queueing shows apart from the work
    assert set(stages) == {"end_to_end", "queue", "decode", "preprocess", "infer"}
    assert stages["end_to_end"]["p50"] >= stages["queue"]["p50"] >= 0
    assert all(e["model"]["sha256"] == rt.bundle.sha256 for e in tel.inspections)


def test_memory_telemetry_keeps_only_the_latest_events():
    tel = MemoryTelemetry(keep=3)
    for i in range(5):
        tel.inspection({"seq": i})
    assert [e["seq"] for e in tel.inspections] == [2, 3, 4]


def test_corrupt_frame_is_a_failsafe_reject(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=4)
    (src / "002.png").write_bytes(b"\x89PNG garbage")
    rt, tel = make_runtime(bundle_dir, src, tmp_path)
    rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 4)
    bad = next(e for e in tel.inspections if e["source"].endswith("002.png"))
    assert (bad["decision"], bad["reason"]) == ("reject", "failsafe") and "cannot decode" in bad["error"]


class Flaky:
    """Wraps a classifier: slow, and failing on chosen calls (counted over all the runtime's workers)."""

    def __init__(self, inner, calls, delay=0.0, fail_on=()):
        self.inner, self.calls, self.delay, self.fail_on = inner, calls, delay, set(fail_on)

    def infer(self, rgb):
        call = next(self.calls)
        time.sleep(self.delay(call) if callable(self.delay) else self.delay)
        if call in self.fail_on:
            raise RuntimeError("simulated interpreter fault")
        return self.inner.infer(rgb)

    def __getattr__(self, name):  # the rest is the classifier's own (its name, its bundle)
        return getattr(self.inner, name)


def make_flaky(rt, delay=0.0, fail_on=()):
    calls = itertools.count(1)
    rt.model = replace(rt.model, classifiers=tuple(Flaky(c, calls, delay, fail_on) for c in rt.model.classifiers))


def test_model_error_is_a_failsafe_reject_with_an_alarm(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=5)
    rt, tel = make_runtime(bundle_dir, src, tmp_path)
    make_flaky(rt, fail_on={3})
    rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 5)
    failed = [e for e in tel.inspections if e["reason"] == "failsafe"]
    assert len(failed) == 1 and "simulated interpreter fault" in failed[0]["error"]
    assert [a["kind"] for a in tel.alarms] == ["model_failed"]


def test_pass_on_error_when_configured_on_purpose(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=3)
    (src / "001.png").write_bytes(b"nope")
    rt, tel = make_runtime(bundle_dir, src, tmp_path, decision__on_error="pass")
    rt.run(on_stats=lambda line: None)
    bad = next(e for e in tel.inspections if e["source"].endswith("001.png"))
    assert (bad["decision"], bad["reason"]) == ("pass", "failsafe")


def test_full_queue_and_deadline_give_failsafe_rejects_never_drops(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=30)
    rt, tel = make_runtime(bundle_dir, src, tmp_path, pipeline__queue_size=1, decision__deadline_ms=150)
    make_flaky(rt, delay=0.05)
    final = rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 30)
    reasons = final["counts"]["reason"]
    assert reasons.get("overflow", 0) > 0, reasons
    assert sum(reasons.values()) == 30
    for e in tel.inspections:
        if e["reason"] in ("overflow", "failsafe"):
            assert e["decision"] == "reject"


def test_a_recorded_folder_waits_for_the_workers_instead_of_overflowing(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=12)
    rt, tel = make_runtime(bundle_dir, src, tmp_path, source__rate_hz=None, pipeline__queue_size=1)
    make_flaky(rt, delay=0.02)
    final = rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 12)
    assert set(final["counts"]["reason"]) <= {"ok", "defect"}  # every frame inspected, none lost to the queue


def test_parts_finished_out_of_order_are_published_and_stored_in_capture_order(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=16)
    rt, tel = make_runtime(bundle_dir, src, tmp_path, decision__threshold=0.0, source__rate_hz=100,
                           pipeline__workers=2)
    make_flaky(rt, delay=lambda call: 0.03 if call % 3 == 0 else 0.0)  # every third part is slow
    rt.run(on_stats=lambda line: None)
    assert [e["seq"] for e in tel.inspections] == list(range(16))
    stored = [json.loads(p.read_text())["seq"] for p in sorted((tmp_path / "rejects").glob("*.json"),
                                                              key=lambda p: p.stat().st_mtime_ns)]
    assert stored == list(range(16))
    assert rt.gate.counts["fired"] == 16 and rt.gate.counts["late"] == 0


def test_a_fault_while_acting_on_one_part_does_not_hold_back_the_others(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=8)
    rt, tel = make_runtime(bundle_dir, src, tmp_path)
    add, calls = rt.stats.add, itertools.count(1)

    def buggy_add(*args):
        if next(calls) == 3:
            raise KeyError("a bug")
        add(*args)

    rt.stats.add = buggy_add
    rt.run(on_stats=lambda line: None)
    assert len(tel.inspections) == 7  # the part that met the bug is alarmed; every later one still goes out
    assert [e["seq"] for e in tel.inspections] == sorted(e["seq"] for e in tel.inspections)
    assert [a["kind"] for a in tel.alarms] == ["internal"] and "a bug" in tel.alarms[0]["message"]


def test_a_gate_with_too_many_parts_in_flight_alarms_and_the_line_keeps_going(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=6)
    rt, tel = make_runtime(bundle_dir, src, tmp_path, decision__threshold=0.0, gpio__gate__max_in_flight=2,
                           store__dir=None)
    final = rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 6)
    assert final["counts"]["reason"] == {"defect": 2, "gate_overflow": 4}
    assert [a["kind"] for a in tel.alarms] == ["gate_overflow"] * 4


class DiskFullTelemetry(MemoryTelemetry):
    def inspection(self, event):
        if event["seq"] == 2:
            raise OSError(28, "No space left on device")
        super().inspection(event)

    def stats(self, snapshot):
        raise OSError(28, "No space left on device")


def test_failing_telemetry_or_reject_store_never_stops_the_line(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=5)
    rt, _ = make_runtime(bundle_dir, src, tmp_path, decision__threshold=0.0, source__rate_hz=100)
    rt.telemetry = tel = DiskFullTelemetry()

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    rt.store.save = full_disk
    final = rt.run(on_stats=lambda line: None)
    assert final["counts"]["parts"] == 5
    assert rt.stats.counts["telemetry_failed"] == 2  # one inspection event, the final stats
    assert sorted(e["seq"] for e in tel.inspections) == [0, 1, 3, 4]
    assert rt.gate.counts["fired"] == 5  # every reject still fired the gate
    assert [a["kind"] for a in tel.alarms] == ["store_failed"] * 5


def test_decision_after_the_gate_window_is_late(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=4)
    rt, tel = make_runtime(bundle_dir, src, tmp_path, decision__threshold=0.0, gpio__gate__delay_ms=1)
    make_flaky(rt, delay=0.01)
    rt.run(on_stats=lambda line: None)
    assert {e["reason"] for e in tel.inspections} == {"late"}
    assert len([a for a in tel.alarms if a["kind"] == "late"]) == 4
    assert rt.gate.counts["late"] == 4 and rt.gate.counts["fired"] == 4  # fired at once (late_policy fire)
    # two workers may decide two parts within one pulse: the gate then stays open for both
    assert len(rt.gpio.pulses(17)) == 4 - rt.gate.counts["merged"]


def test_hot_reload_keeps_the_old_model_when_the_new_one_is_bad(bundle_dir, tmp_path, synth32):
    shutil.copytree(bundle_dir, tmp_path / "bundles" / "v2")
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=1), tmp_path, bundles_dir=str(tmp_path / "bundles"))
    old = rt.model
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    (bad / "model.tflite").write_bytes(b"\0" * 100)
    res = rt.reload(bad)
    assert not res["ok"] and "sha256" in res["error"]
    assert rt.model is old
    assert tel.alarms[-1]["kind"] == "reload_failed"
    good = rt.command("reload", {"bundle": "v2", "sha256": old.bundle.sha256})
    assert good["ok"] and rt.model is not old and rt.bundle.sha256 == old.bundle.sha256
    assert len(rt.model.classifiers) == rt.cfg.pipeline.workers  # an interpreter per worker, all verified
    assert not rt.command("reload", {"bundle": "v2", "sha256": "0" * 64})["ok"]


def test_a_reload_while_running_takes_effect_between_parts(bundle_dir, tmp_path, synth32):
    renamed = tmp_path / "renamed"
    shutil.copytree(bundle_dir, renamed)
    meta = json.loads((renamed / "model.json").read_text())
    write_card(renamed, meta | {"name": "retrained"})
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=40), tmp_path, source__rate_hz=100)

    def operator():
        while len(tel.inspections) < 10:
            time.sleep(0.01)
        assert rt.reload(renamed)["ok"]

    threading.Thread(target=operator).start()
    rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 40)
    names = [e["model"]["name"] for e in tel.inspections]
    assert names[:10] == [meta["name"]] * 10 and names[-10:] == ["retrained"] * 10


def test_commands_are_validated(bundle_dir, tmp_path, synth32):
    src = frames(synth32, tmp_path, n=6)
    rt, tel = make_runtime(bundle_dir, src, tmp_path)
    assert rt.command("threshold", {"value": 0.3}) == {"ok": True, "threshold": 0.3}
    for bad in ({"value": 5}, {"value": "0.3"}, {}, {"value": True}):
        assert not rt.command("threshold", bad)["ok"]
    assert rt.threshold == 0.3
    assert not rt.command("explode", {})["ok"]
    rt.command("pause", {})
    rt.run(on_stats=lambda line: None)
    assert {e["reason"] for e in tel.inspections} == {"paused"}
    assert {e["decision"] for e in tel.inspections} == {"reject"}


def test_part_sensor_triggers_capture(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=20)
    rt, tel = make_runtime(bundle_dir, src, tmp_path, trigger__mode="part_sensor",
                           gpio__part_sensor={"pin": 4, "debounce_ms": 1})

    def conveyor():
        for _ in range(5):
            time.sleep(0.03)
            rt.gpio.drive(4, 1)
            time.sleep(0.002)
            rt.gpio.drive(4, 0)
        time.sleep(0.3)
        rt.stop_event.set()

    threading.Thread(target=conveyor).start()
    rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 5)


def test_reject_store_cap_and_review(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=8)
    rt, tel = make_runtime(bundle_dir, src, tmp_path, decision__threshold=0.0, store__max_files=3,
                           source__rate_hz=50, pipeline__queue_size=8)  # saved in capture order
    rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 8)
    assert {e["reason"] for e in tel.inspections} == {"defect"}
    kept = sorted((tmp_path / "rejects").glob("*.json"))
    assert len(kept) == 3
    assert [json.loads(p.read_text())["seq"] for p in kept] == [5, 6, 7]  # the oldest went first
    assert len(list((tmp_path / "rejects").glob("*_box.png"))) == 3
    dataset = tmp_path / "dataset"
    (dataset / "good").mkdir(parents=True)
    first = json.loads(kept[0].read_text())["id"]
    filed = review(tmp_path / "rejects", dataset, label="scratch", labels_file=None)
    assert filed == {"scratch": 3}
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({first: "good"}))
    assert review(tmp_path / "rejects", dataset, labels_file=labels) == {"good": 1}
    with pytest.raises(QCError, match="--label"):
        review(tmp_path / "rejects", dataset)


def test_config_typo_names_the_key(tmp_path, bundle_dir):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(f"bundle: {bundle_dir}\ndecision:\n  treshold: 0.4\n")
    with pytest.raises(QCError, match=r"decision.treshold: Extra inputs are not permitted"):
        load_config(cfg)
    cfg.write_text(f"bundle: {bundle_dir}\ntrigger:\n  mode: part_sensor\n")
    with pytest.raises(QCError, match="needs gpio.part_sensor"):
        load_config(cfg)


def test_roi_box_is_in_frame_coordinates(bundle_dir, tmp_path):
    import cv2

    src = tmp_path / "big"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.random.default_rng(0).integers(0, 255, (120, 160), np.uint8))
    rt, tel = make_runtime(bundle_dir, src, tmp_path, decision__threshold=0.0, pipeline__roi=[40, 20, 64, 64])
    rt.run(on_stats=lambda line: None)
    x, y, w, h = tel.inspections[0]["box"]
    assert 40 <= x and 20 <= y and x + w <= 104 and y + h <= 84


def test_encoder_triggers_a_part_every_pitch_and_fires_by_distance(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=10)
    rt, tel = make_runtime(bundle_dir, src, tmp_path, decision__threshold=0.0, trigger__mode="encoder",
                           trigger__pitch_counts=10, gpio__encoder={"pin": 22},
                           gpio__gate={"delay_ms": None, "distance_counts": 25, "pulse_ms": 1, "min_gap_ms": 0})

    def belt():
        for _ in range(60):  # 60 counts: parts at 10, 20, ... 60
            time.sleep(0.004)
            rt.gpio.pulse_in(22)
        time.sleep(0.5)
        for _ in range(40):  # the belt moves on: the last parts reach the gate
            rt.gpio.pulse_in(22)
        rt.stop_event.set()

    threading.Thread(target=belt).start()
    rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 6)
    assert rt.gate.counts["fired"] == 6 and rt.gate.counts["late"] == 0


def test_bench_reports_stages_naive_loop_capacity_and_latency_at_line_rate(bundle_dir):
    from bench.edge_pipeline import LINE_SHARE, SLOWER_LINES, run_benchmark

    r = run_benchmark(bundle_dir, n=20, seconds=0.5, warmup=0.2)
    stages, naive = r["stages_alone_per_s"], r["naive_sequential_loop_per_s"]
    assert min(stages.values()) > 0 and naive > 0
    cap, line = r["pipeline_capacity"], r["pipeline_at_line_rate"]
    for run in (cap, line):  # every part decided: inspected, or fail-safe with its reason
        assert run["parts"] > 0 and run["inspected"] + run["not_inspected"] == run["parts"] == sum(run["reasons"].values())
    assert line["offered_per_s"] == pytest.approx(LINE_SHARE * min(stages.values()), abs=0.2)
    slower = r["latency_at_slower_lines"]
    assert [s["share_of_slowest_stage"] for s in slower] == list(SLOWER_LINES)
    assert all(s["offered_per_s"] < line["offered_per_s"] and s["latency_p99_ms"] >= s["latency_p50_ms"] > 0
               for s in slower)
    assert r["ratios"]["capacity_vs_naive"] == pytest.approx(cap["inspected_per_s"] / naive, abs=0.002)
    floor = r["naive_loop_in_processes_at_line_rate"]  # the same line rate with no pipeline at all
    assert floor["processes"] == r["workers"] and floor["offered_per_s"] == line["offered_per_s"]
    assert floor["parts"] > 0 and floor["latency_p99_ms"] >= floor["latency_p50_ms"] > 0
    assert r["meets_targets"] is False or line["not_inspected"] == 0  # targets are never met by losing parts
    assert r["workers"] == 2 or r["workers"] == os.cpu_count() == 1
    backbones = r["backbones_int8_invoke_cpu"]  # the default beside the one it replaced, in the same run
    assert backbones["default"] == "mobilenet_v3_small_minimalistic" != backbones["previous_default"]
    assert set(backbones["int8_invoke_ms"]) == {backbones["default"], backbones["previous_default"]}
    assert min(backbones["int8_invoke_ms"].values()) > 0 and backbones["input_size"] == 32
    tiled = r["per_frame_whole_and_tiles"]  # a 640 x 480 frame holds 27 x 20 tiles of 32 px with 8 px overlap
    assert tiled["640x480"]["tiles"] == 540 and min(tiled["640x480"]["tiles_ms"], tiled["640x480"]["whole_frame_ms"]) > 0
    assert json.loads(json.dumps(r)) == r  # printable as JSON


def test_every_reason_a_part_gets_is_documented(bundle_dir, synth32, tmp_path):
    from edge.decision import REASONS, failsafe

    src = frames(synth32, tmp_path)
    (src / "000a.png").write_bytes(b"not an image")  # second in line: the gate still has room for it
    rt, tel = make_runtime(bundle_dir, src, tmp_path, decision__threshold=0.0, gpio__gate__max_in_flight=2,
                           gpio__gate__delay_ms=1000)
    rt.run(on_stats=lambda line: None)
    reasons = {e["reason"] for e in tel.inspections}
    assert {"defect", "failsafe", "gate_overflow"} <= reasons and reasons <= set(REASONS)
    with pytest.raises(ValueError, match="lost"):
        failsafe("lost")  # an undocumented reason is a bug, not a new value
