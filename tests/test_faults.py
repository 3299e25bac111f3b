"""Nothing lost, nothing crashes: one test per fault found by trying the box as a user would (issue 26): a full
disk, a model overwritten in place, a bad reload, a huge image, a named pipe among the frames, a second copy
of the box, files that are not what they claim, a full spool."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bench.faults import fill_disk, huge_png
from edge.images import ImageTooLarge, decode
from edge.telemetry import JsonlTee, MemoryTelemetry
from firmware_io.mqtt.broker import LocalBroker
from firmware_io.mqtt.client import MQTTTelemetry
from firmware_io.mqtt.config import MQTTConfig
from firmware_io.mqtt.spool import Spool, SpoolBusy
from qc.cli import main

from .conftest import write_card
from .test_cameras import FreeRunning
from .test_mqtt import Listener, event, wait_for
from .test_pipeline import check_one_decision_each, frames, make_runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a disk that really fills (mounting needs root, which CI has)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


# 1. a full disk ----------------------------------------------------------------------------------------------

def test_a_full_disk_refuses_new_events_keeps_the_sender_alive_and_delivers_every_accepted_one(small_disk, tmp_path):
    broker = LocalBroker(tmp_path / "broker")  # down at first: events pile up in the spool
    cfg = MQTTConfig(url=broker.url, spool_path=small_disk / "spool.sqlite", spool_reserve_mb=1.0,
                     reconnect_min_s=0.5, reconnect_max_s=1)
    tel = MQTTTelemetry(cfg, "l1", "s1", log_stream=open(os.devnull, "w"))
    accepted = [i for i in range(20_000) if tel.inspection(event(i) | {"pad": "x" * 400})]
    assert 100 < len(accepted) < 20_000 and tel.counts["refused_full"] == 20_000 - len(accepted)
    filler = fill_disk(small_disk)  # something else takes the reserve too: deleting may fail now (SQLITE_FULL)
    assert not tel.inspection(event(20_000))
    listener = Listener(broker.start().port, "qc/l1/s1/inspection")
    assert wait_for(tel.connected.is_set)
    time.sleep(3)  # pages freed by acknowledged events may take new ones again: only the sender is checked here
    assert tel._sender.is_alive()
    filler.unlink()  # space returns
    assert wait_for(lambda: len(tel.spool) == 0, timeout=60), (len(tel.spool), tel.counts)
    assert wait_for(lambda: {json.loads(p)["seq"] for _, p, _ in listener.msgs} >= set(accepted), timeout=20)
    assert tel._sender.is_alive() and tel.inspection(event(99_999))  # and it takes events again
    tel.close()
    listener.stop()
    broker.stop()


def test_a_full_disk_under_the_reject_store_writes_no_empty_files_and_alarms_once(small_disk, bundle_dir, synth32,
                                                                                  tmp_path):
    fill_disk(small_disk)
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=30), tmp_path, decision__threshold=0.0,
                           store__dir=str(small_disk / "rejects"))
    rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 30)  # the line keeps deciding every part
    assert {e["decision"] for e in tel.inspections} == {"reject"}
    assert [a["kind"] for a in tel.alarms].count("store_failed") == 1
    assert rt.store.not_saved == 29
    assert not [p for p in (small_disk / "rejects").iterdir() if p.stat().st_size == 0]


# 2. a model overwritten in place -----------------------------------------------------------------------------

def test_a_model_overwritten_in_place_during_a_run_changes_nothing(bundle_dir, synth32, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(bundle_dir, live)
    sha = json.loads((live / "model.json").read_text())["sha256"]
    config = tmp_path / "edge.yaml"
    config.write_text(json.dumps({"bundle": str(live), "stats_interval_s": 0.2, "store": {"dir": None},
                                  "gpio": {"backend": "sim"}, "web": {"port": 0},
                                  "source": {"kind": "folder", "path": str(synth32 / "test"), "loop": True,
                                             "rate_hz": 40}}))
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "qc", "run", "--config", str(config), "--max-parts", "160",
                             "--events", str(events)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: events.exists() and len(events.read_text().splitlines()) >= 20, timeout=60)
    model = (live / "model.tflite").read_bytes()
    with open(live / "model.tflite", "r+b") as f:  # as `cp other.tflite live/model.tflite` does: same inode
        f.truncate(0)
        f.write(model[: len(model) // 3])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]  # not killed by SIGBUS (-7)
    decided = [json.loads(line) for line in events.read_text().splitlines()]
    assert len(decided) == 160 and {e["model"]["sha256"] for e in decided} == {sha}


def test_interpreters_are_made_from_the_verified_bytes_not_from_the_file(bundle_dir, tmp_path):
    """The race behind the SIGBUS: a bundle verified, then its file overwritten before (or while) an interpreter
    maps it, as a reload or another worker's interpreter would."""
    from edge.bundle import load_bundle
    from edge.classifiers import make_classifier

    live = tmp_path / "live"
    shutil.copytree(bundle_dir, live)
    verified = load_bundle(live)
    os.truncate(live / "model.tflite", 0)
    clf = make_classifier(verified, "cpu", 1)
    h, w = verified.input_size
    assert clf.infer(np.zeros((h, w, 3), np.uint8)).scores.shape == (len(verified.labels),)


# 3. a reload that fails halfway -----------------------------------------------------------------------------

def test_a_bad_reload_changes_nothing_and_a_commanded_threshold_outlives_a_good_one(bundle_dir, synth32, tmp_path):
    bundles = tmp_path / "bundles"
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=4), tmp_path, bundles_dir=str(bundles))
    assert rt.command("threshold", {"value": 0.3})["ok"]
    running = rt.model
    bad = bundles / "bad"
    shutil.copytree(bundle_dir, bad)
    card = json.loads((bad / "model.json").read_text())
    write_card(bad, card | {"threshold": card["threshold"] | {"value": "abc"}})
    reply = rt.command("reload", {"bundle": "bad"})
    assert not reply["ok"] and "threshold.value" in reply["error"]
    assert rt.model is running and rt.threshold == 0.3
    assert tel.alarms[-1]["kind"] == "reload_failed" and "kept model" in tel.alarms[-1]["message"]
    good = bundles / "good"
    shutil.copytree(bundle_dir, good)
    write_card(good, card | {"name": "retrained"})
    assert rt.command("reload", {"bundle": "good"})["ok"]
    assert rt.bundle.name == "retrained" and rt.threshold == 0.3  # the operator's threshold stays
    assert rt.command("reload", {"bundle": "good", "keep_threshold": False})["threshold"] == card["threshold"]["value"]


def test_a_bad_bundle_seen_by_the_file_watcher_is_an_alarm_and_the_line_runs_on(bundle_dir, synth32, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(bundle_dir, live)
    rt, tel = make_runtime(live, frames(synth32, tmp_path, n=40), tmp_path, source__rate_hz=40, reload_watch=True,
                           stats_interval_s=0.05)
    card = json.loads((live / "model.json").read_text())

    def operator():
        wait_for(lambda: len(tel.inspections) >= 5)
        (live / "model.json").write_text(json.dumps(card | {"threshold": "abc"}))

    threading.Thread(target=operator).start()
    rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 40)
    assert "reload_failed" in {a["kind"] for a in tel.alarms}
    assert {e["model"]["sha256"] for e in tel.inspections} == {card["sha256"]}


# 4. bounded work per part ------------------------------------------------------------------------------------

def test_a_huge_image_is_refused_from_its_header_with_bounded_memory(tmp_path, bundle_dir):
    png = huge_png(tmp_path / "huge.png")
    assert png.stat().st_size < 1_000_000
    probe = ("import sys; from edge.images import decode, ImageTooLarge\n"
             "try: decode(open(sys.argv[1], 'rb').read(), 'huge.png')\nexcept ImageTooLarge as e: print(e)\n"
             "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))")
    out = subprocess.run([sys.executable, "-c", probe, str(png)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    message, peak_kb = out.stdout.strip().splitlines()
    assert "20000 x 20000 pixels is over the 50,000,000 allowed" in message
    assert int(peak_kb) < 200_000  # peak RSS: about 50 MB with OpenCV and Pillow loaded; decoding takes 400 MB
    with pytest.raises(ImageTooLarge):
        decode(png.read_bytes(), "huge.png", max_pixels=10)

    src = tmp_path / "frames"
    src.mkdir()
    shutil.copy(png, src / "000.png")
    rt, tel = make_runtime(bundle_dir, src, tmp_path)
    rt.run(on_stats=lambda line: None)
    (only,) = tel.inspections
    assert (only["decision"], only["reason"]) == ("reject", "too_large") and "not decoded" in only["error"]


def test_the_deadline_is_checked_after_the_model(bundle_dir, synth32, tmp_path):
    rt, tel = make_runtime(bundle_dir, frames(synth32, tmp_path, n=3), tmp_path, decision__deadline_ms=50)
    for clf in rt.model.classifiers:
        infer = clf.infer
        clf.infer = lambda rgb, infer=infer: (time.sleep(0.1), infer(rgb))[1]  # a model slower than the deadline
    rt.run(on_stats=lambda line: None)
    check_one_decision_each(tel, 3)
    assert {(e["decision"], e["reason"]) for e in tel.inspections} == {("reject", "failsafe")}
    assert all("not decided within decision.deadline_ms 50" in e["error"] for e in tel.inspections)
    assert any(e["error"].endswith("(inference)") for e in tel.inspections)  # inferred, then found too late


def test_a_named_pipe_among_the_frames_is_skipped_with_an_alarm(bundle_dir, synth32, tmp_path):
    src = frames(synth32, tmp_path, n=6)
    os.mkfifo(src / "003b.png")  # nothing ever writes to it: reading it would block forever
    rt, tel = make_runtime(bundle_dir, src, tmp_path)
    t0 = time.monotonic()
    rt.run(duration=30, on_stats=lambda line: None)
    assert time.monotonic() - t0 < 20  # the run ended with its frames, not blocked on the pipe
    check_one_decision_each(tel, 6)
    (alarm,) = [a for a in tel.alarms if a["kind"] == "skipped_file"]
    assert "003b.png" in alarm["message"]


def test_a_free_running_camera_that_goes_silent_is_alarmed(bundle_dir, tmp_path):
    class Silent(FreeRunning):
        def _read(self, timeout):
            if len(self.exposed) >= 5:
                time.sleep(timeout)  # connected, but no frame comes any more
                return None
            return super()._read(timeout)

    rt, tel = make_runtime(bundle_dir, tmp_path, tmp_path, Silent(), source__stall_s=0.3)
    rt.run(duration=2.0, on_stats=lambda line: None)
    assert len(tel.inspections) == 5
    (alarm,) = [a for a in tel.alarms if a["kind"] == "camera_lost"]
    assert "no frame for" in alarm["message"]


# 5. one box, one spool ---------------------------------------------------------------------------------------

def test_a_second_process_on_one_spool_exits_at_once_with_a_named_error(bundle_dir, synth32, tmp_path):
    spool = tmp_path / "spool.sqlite"
    held = Spool(spool)
    with pytest.raises(SpoolBusy, match=f"in use by another process \\(pid {os.getpid()}\\)"):
        Spool(spool)
    config = tmp_path / "edge.yaml"
    config.write_text(json.dumps({"bundle": str(bundle_dir), "gpio": {"backend": "sim"}, "web": {"port": 0},
                                  "source": {"kind": "folder", "path": str(synth32 / "test")},
                                  "mqtt": {"enabled": True, "url": "mqtt://127.0.0.1:9", "spool_path": str(spool)}}))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "qc", "run", "--config", str(config), "--max-parts", "3"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and time.monotonic() - t0 < 30
    assert out.stderr.strip().splitlines() == [
        f"qc run: error: spool {spool} is in use by another process (pid {os.getpid()}); one box, one spool: stop the "
        "other qc or give this one its own mqtt.spool_path"]
    held.close()
    again = Spool(spool)  # free once the holder closes it
    again.close()


# 6. files that are not what they claim -----------------------------------------------------------------------

def test_files_that_are_not_what_they_claim_are_one_line_errors(bundle_dir, tmp_path, capsys):
    binary = tmp_path / "edge.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    cases = [(["config", "check", str(binary)], "not a text file"),
             (["config", "check", str(tmp_path)], "a directory, not a config file")]
    missing = tmp_path / "cfg.yaml"
    missing.write_text(f"bundle: {tmp_path / 'nowhere'}\n")
    cases.append((["config", "check", str(missing)], "not a bundle (no model.json)"))
    tls = tmp_path / "tls.yaml"
    tls.write_text(f"bundle: {bundle_dir}\nstore: {{dir: null}}\n"
                   f"mqtt: {{url: 'mqtts://broker:8883', ca_file: {tmp_path / 'ca.pem'}}}\n")
    cases.append((["config", "check", str(tls)], f"mqtt.ca_file {tmp_path / 'ca.pem'}: no such file"))
    empty = tmp_path / "empty"
    shutil.copytree(bundle_dir, empty)
    (empty / "model.tflite").write_bytes(b"")
    card = json.loads((empty / "model.json").read_text())
    write_card(empty, card | {"sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"})
    cases.append((["bundle", "verify", str(empty)], "LiteRT cannot load the model"))
    for argv, problem in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert problem in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)


# 7. the events file and the spool agree ----------------------------------------------------------------------

def test_what_a_full_spool_refused_is_marked_so_in_the_events_file(tmp_path):
    cfg = MQTTConfig(url="mqtt://127.0.0.1:9", spool_path=tmp_path / "spool.sqlite", spool_max_events=10)
    tel = JsonlTee(MQTTTelemetry(cfg, "l1", "s1", log_stream=open(os.devnull, "w")), tmp_path / "events.jsonl")
    for i in range(15):
        tel.inspection(event(i))
    tel.close()
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    spool = Spool(tmp_path / "spool.sqlite")
    spooled = [json.loads(row.payload)["seq"] for row in spool.after(0, 100) if row.kind == "inspection"]
    spool.close()
    assert [e["seq"] for e in lines if "refused" not in e] == spooled == list(range(len(spooled)))
    assert {e["refused"] for e in lines if "refused" in e} == {"spool_full"} and len(spooled) < 15
    assert MemoryTelemetry().inspection(event(0)) is None  # no spool: nothing to refuse
