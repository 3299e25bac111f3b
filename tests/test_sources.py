"""Frame sources and decisions: video files, a lost camera, per-class thresholds, a clean stop on SIGTERM."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import SourceConfig
from edge.decision import decide, failsafe
from edge.sources import OpenCVCamera, Paced, make_source

ROOT = Path(__file__).resolve().parents[1]


def test_a_folder_image_removed_after_the_scan_is_a_frame_without_image(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), 50 * i, np.uint8))
    frames = iter(make_source(SourceConfig(kind="folder", path=str(tmp_path))))
    first = next(frames)
    # the capture thread only reads the bytes: decoding waits for the worker that first asks for the image
    assert first.pixels is None and first.encoded is not None
    assert first.image.shape == (8, 8, 3) and first.encoded is None
    (tmp_path / "1.png").unlink()
    gone, last = next(frames), next(frames)
    assert gone.image is None and "cannot read" in gone.error and gone.seq == 1
    assert last.image is not None and last.seq == 2


def test_video_file_frames_in_order(tmp_path):
    path = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(7):
        writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
    writer.release()
    frames = list(make_source(SourceConfig(kind="video", path=str(path))))
    assert [f.seq for f in frames] == list(range(7))
    assert all(f.image.shape == (48, 64, 3) for f in frames)
    assert frames[3].image.mean() > frames[1].image.mean()
    stamps = [f.stamp for f in frames]
    assert stamps == sorted(stamps)


def test_lost_camera_is_reopened_with_backoff_and_alarmed():
    alarms = []
    src = OpenCVCamera(SourceConfig(kind="camera", path="/dev/video99", reconnect_min_s=0.01, reconnect_max_s=0.04),
                       on_alarm=lambda kind, msg: (alarms.append((kind, msg)), len(alarms) >= 4 and src.close()))
    assert list(src) == []
    assert [k for k, _ in alarms] == ["camera_lost"] * 4
    assert "reopening in 0.01s" in alarms[0][1] and "reopening in 0.04s" in alarms[-1][1]  # backoff grows, capped


def test_decisions_threshold_and_per_class():
    labels = ["good", "crack", "stain"]
    d = decide(np.array([0.7, 0.1, 0.2]), labels, threshold=0.5, good_index=0)
    assert (d.decision, d.reason, d.label) == ("pass", "ok", "good") and abs(d.score - 0.3) < 1e-6
    d = decide(np.array([0.7, 0.1, 0.2]), labels, threshold=0.25, good_index=0)
    assert (d.decision, d.label) == ("reject", "stain")  # rejected on the defect score: the likeliest defect
    d = decide(np.array([0.85, 0.12, 0.03]), labels, threshold=0.5, good_index=0, class_thresholds={"crack": 0.1})
    assert (d.decision, d.reason) == ("reject", "defect")
    assert failsafe("failsafe").decision == "reject" and failsafe("failsafe", "pass").decision == "pass"


def test_sigterm_finishes_parts_in_flight_and_exits_cleanly(tmp_path, bundle_dir, synth32):
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "qc", "run", "--bundle", str(bundle_dir), "--source",
                             str(synth32 / "test"), "--rate", "30", "--gpio", "sim", "--events", str(events)],
                            cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (events.exists() and len(events.read_text().splitlines()) >= 5):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    final = json.loads(out[out.index("{"):])
    lines = events.read_text().splitlines()
    assert final["counts"]["parts"] == len(lines) >= 5  # every captured part was decided and written
    assert final["gate"].get("dropped_on_stop", 0) == 0  # rejects in flight fired before the gate closed


def test_a_paced_line_stamps_parts_when_due_even_if_the_reader_wakes_late():
    pace = Paced(100)
    first = pace.wait()
    time.sleep(0.035)  # a busy machine: the capture thread gets its turn 3.5 periods late
    late = [pace.wait() for _ in range(3)]
    assert late == pytest.approx([first + 0.01 * k for k in (1, 2, 3)])
    assert late[-1] < time.monotonic() - 0.004  # due in the past: the delay counts in each part's latency
    assert Paced(None).wait() == pytest.approx(time.monotonic(), abs=0.05)  # unpaced: stamped when read
