"""Cameras: triggered frames exposed after their trigger; a real GigE Vision stack (Aravis with Debian's
`arv-fake-gv-camera-0.8` on 127.0.0.1), killed and restarted mid-run; GStreamer with videotestsrc; the Pi
camera through a recording stand-in for Picamera2 (no Pi here)."""

import json
import shutil
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from edge.cameras import DeviceClock, to_bgr
from edge.config import SourceConfig
from edge.errors import EdgeError
from edge.sources import LiveSource

from .test_pipeline import check_one_decision_each, make_runtime

FAKE_CAMERA = "arv-fake-gv-camera-0.8"
def _library(kind):
    from edge.cameras import require

    try:
        return require(kind)
    except EdgeError as exc:
        pytest.skip(f"not installed here (.ci/run installs it): {exc}")


class FreeRunning(LiveSource):
    """A stand-in camera that exposes a frame every 10 ms on its own, as a free-running camera does; it
    remembers when each frame was exposed, by frame number."""

    def __init__(self):
        super().__init__(SourceConfig(kind="camera", path="stand-in"))
        self.exposed: dict[int, float] = {}
        self.next = time.monotonic()

    def _open(self):
        pass

    def _read(self, timeout):
        self.next += 0.01
        time.sleep(max(0.0, self.next - time.monotonic()))
        self.exposed[len(self.exposed)] = self.next
        return np.full((32, 32, 3), 128, np.uint8), self.next, None


def _conveyor(rt, n, every=0.07, pin=4):
    """Part-sensor edges on the simulated GPIO; the times just before each edge."""
    sent = []

    def run():
        deadline = time.monotonic() + 20
        while not getattr(rt.source, "connected", True) and time.monotonic() < deadline:
            time.sleep(0.02)  # the box is up before the line starts
        for _ in range(n):
            time.sleep(every)
            sent.append(time.monotonic())
            rt.gpio.drive(pin, 1)
            time.sleep(0.002)
            rt.gpio.drive(pin, 0)
        time.sleep(0.6)
        rt.stop_event.set()

    thread = threading.Thread(target=run)
    thread.start()
    return sent, thread


def test_every_triggered_part_gets_a_frame_exposed_after_its_trigger(bundle_dir, tmp_path):
    cam = FreeRunning()  # the frames of a camera that runs on its own, taken while parts come
    rt, tel = make_runtime(bundle_dir, tmp_path, tmp_path, cam, trigger__mode="part_sensor",
                           gpio__part_sensor={"pin": 4, "debounce_ms": 1})
    sent, conveyor = _conveyor(rt, 8)
    rt.run(on_stats=lambda line: None)
    conveyor.join()
    check_one_decision_each(tel, 8)
    exposed = [cam.exposed[int(e["source"].rsplit("#", 1)[1])] for e in tel.inspections]
    late = [round(s - x, 4) for s, x in zip(sent, exposed) if x < s]
    assert not late, f"frames exposed before their trigger, by (s): {late}"
    assert all(x - s < 0.2 for s, x in zip(sent, exposed))  # and the first after it, not any later one
    assert cam.counts["before_trigger"] > 0  # frames the camera took between parts were left aside


def test_a_trigger_without_a_frame_is_one_fail_safe_camera_lost_decision(bundle_dir, tmp_path):
    class Dead(FreeRunning):
        def _read(self, timeout):
            time.sleep(timeout)  # the camera sends nothing

    rt, tel = make_runtime(bundle_dir, tmp_path, tmp_path, Dead(), trigger__mode="part_sensor",
                           trigger__frame_timeout_ms=50, gpio__part_sensor={"pin": 4, "debounce_ms": 1})
    _, conveyor = _conveyor(rt, 4)
    rt.run(on_stats=lambda line: None)
    conveyor.join()
    check_one_decision_each(tel, 4)
    assert {(e["decision"], e["reason"]) for e in tel.inspections} == {("reject", "camera_lost")}
    assert "trigger.frame_timeout_ms 50" in tel.inspections[0]["error"]


def test_device_clock_maps_camera_time_to_the_monotonic_clock_never_early():
    clock = DeviceClock()
    device0, host0 = 5_000_000_000, 100.0  # the camera's clock started elsewhere
    latencies = [0.004, 0.002, 0.009, 0.003]  # readout + transfer, never below 2 ms
    stamps = [clock(device0 + i * 10_000_000, host0 + i * 0.01 + lat) for i, lat in enumerate(latencies)]
    exposed = [host0 + i * 0.01 for i in range(4)]
    assert all(s >= x for s, x in zip(stamps, exposed))  # late by the shortest latency seen so far, never early
    assert stamps[-1] - exposed[-1] == pytest.approx(0.002)


def test_pixel_formats_become_bgr():
    mono = bytes(range(12))
    assert to_bgr(mono, 4, 3, "Mono8").shape == (3, 4)
    rgb = bytes([255, 0, 0] * 4)
    assert to_bgr(rgb, 2, 2, "RGB8")[0, 0].tolist() == [0, 0, 255]  # red, as OpenCV's B, G, R
    assert to_bgr(bytes(16), 4, 4, "BayerRG8").shape == (4, 4, 3)


# --- Aravis against a real GigE Vision stack ---------------------------------------------------------------


@pytest.fixture
def fake_camera():
    """Debian's fake GigE Vision camera on 127.0.0.1; `restart()` starts it again after a kill."""
    if shutil.which(FAKE_CAMERA) is None:
        pytest.skip(f"{FAKE_CAMERA} is not installed (.ci/run installs aravis-tools)")
    _library("aravis")
    cam = SimpleNamespace(serial="QC01", id="Aravis-Fake-QC01", proc=None)

    def start():
        cam.proc = subprocess.Popen([FAKE_CAMERA, "-i", "127.0.0.1", "-s", cam.serial],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    cam.start, cam.kill = start, lambda: (cam.proc.kill(), cam.proc.wait())
    start()
    yield cam
    cam.kill()


def test_aravis_free_running_frames_carry_the_cameras_time(fake_camera):
    from edge.cameras import AravisSource

    src = AravisSource(SourceConfig(kind="aravis", path=fake_camera.id, pixel_format="Mono8",
                                    region=(0, 0, 320, 240), fps=50))
    frames, t0 = [], time.monotonic()
    for frame in src:
        frames.append(frame)
        if len(frames) == 10:
            break
    src.close()
    assert all(f.image.shape == (240, 320) and f.error is None for f in frames)
    stamps = [f.stamp for f in frames]
    assert stamps == sorted(stamps) and t0 - 2 < stamps[0] and stamps[-1] <= time.monotonic()
    assert np.median(np.diff(stamps)) == pytest.approx(0.02, abs=0.005)  # 50 frames/s, by the camera's clock
    assert src.stats["frames"] >= 10 and src.stats["n_completed_buffers"] >= 10


def test_aravis_software_trigger_per_part_and_a_camera_killed_mid_run(fake_camera, bundle_dir, tmp_path):
    rt, tel = make_runtime(bundle_dir, tmp_path, tmp_path, trigger__mode="part_sensor",
                           source={"kind": "aravis", "path": fake_camera.id, "pixel_format": "Mono8",
                                   "region": [0, 0, 64, 64], "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                           gpio__part_sensor={"pin": 4, "debounce_ms": 1})
    sent, phases = [], {}

    def line():
        def part():
            sent.append(time.monotonic())
            rt.gpio.drive(4, 1)
            time.sleep(0.002)
            rt.gpio.drive(4, 0)
            time.sleep(0.1)

        try:
            deadline = time.monotonic() + 20
            while not rt.running.is_set() and time.monotonic() < deadline:  # the box is up before the line starts
                time.sleep(0.02)
            for _ in range(10):
                part()
            phases["kill"] = len(sent)
            fake_camera.kill()
            for _ in range(25):  # 2.5 s without a camera: the parts keep coming
                part()
            phases["restart"] = len(sent)
            fake_camera.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not _inspected_since(tel, phases["restart"] + 5):
                part()
            for _ in range(5):
                part()
            time.sleep(0.7)
        finally:
            rt.stop_event.set()

    thread = threading.Thread(target=line)
    thread.start()
    rt.run(on_stats=lambda line: None)
    thread.join()
    events = list(tel.inspections)
    check_one_decision_each(tel, len(sent))  # every trigger: one decision
    reasons = [e["reason"] for e in events]
    before, during = reasons[: phases["kill"]], reasons[phases["kill"]: phases["restart"]]
    assert set(before) <= {"ok", "defect"}  # software-triggered frames, all inspected
    assert "camera_lost" in during and set(during) <= {"ok", "defect", "camera_lost"}
    assert set(reasons[-5:]) <= {"ok", "defect"}  # capture resumed when the camera came back
    assert any(a["kind"] == "camera_lost" for a in tel.alarms)
    for e, t in zip(events, sent):  # each inspected frame was exposed after its trigger
        if e["reason"] in ("ok", "defect"):
            assert e["ts"] >= time.time() - (time.monotonic() - t) - 0.005, e
    assert rt.source.stats["opened"] >= 2 and rt.source.stats["triggers"] >= phases["kill"]


def _inspected_since(tel, index):
    return any(e["reason"] in ("ok", "defect") for e in list(tel.inspections)[index:])


def test_qc_cameras_lists_the_gige_camera_with_its_serial(fake_camera):
    out = subprocess.run([sys.executable, "-m", "qc", "cameras"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert any(c["serial"] == fake_camera.serial and c["protocol"] == "GigEVision" for c in found["aravis"])
    assert "v4l2" in found and "picamera2" in found


# --- GStreamer ----------------------------------------------------------------------------------------------


def test_gstreamer_pipeline_frames_and_triggered_parts(bundle_dir, tmp_path):
    _library("gstreamer")
    from edge.cameras import GstSource

    pipeline = "videotestsrc is-live=true pattern=ball ! video/x-raw,width=90,height=60,framerate=50/1"
    src = GstSource(SourceConfig(kind="gstreamer", pipeline=pipeline))
    frames = []
    for frame in src:
        frames.append(frame)
        if len(frames) == 5:
            break
    src.close()
    assert all(f.image.shape == (60, 90, 3) for f in frames)  # rows padded to 4 bytes are cut back
    stamps = [f.stamp for f in frames]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.monotonic()) < 1
    assert np.median(np.diff(stamps)) == pytest.approx(0.02, abs=0.004)  # buffer times, not arrival

    rt, tel = make_runtime(bundle_dir, tmp_path, tmp_path, trigger__mode="part_sensor",
                           source={"kind": "gstreamer", "pipeline": pipeline},
                           gpio__part_sensor={"pin": 4, "debounce_ms": 1})
    sent, conveyor = _conveyor(rt, 5)
    rt.run(on_stats=lambda line: None)
    conveyor.join()
    check_one_decision_each(tel, 5)
    assert {e["reason"] for e in tel.inspections} <= {"ok", "defect"}
    assert all(e["ts"] >= time.time() - (time.monotonic() - s) - 0.005 for e, s in zip(tel.inspections, sent))


def test_gstreamer_bad_pipeline_is_alarmed_and_retried():
    _library("gstreamer")
    from edge.cameras import GstSource

    alarms = []
    src = GstSource(SourceConfig(kind="gstreamer", pipeline="nosuchsrc ! fakesink", reconnect_min_s=0.01),
                    on_alarm=lambda kind, msg: (alarms.append((kind, msg)), len(alarms) >= 2 and src.close()))
    assert list(src) == []
    assert alarms[0][0] == "camera_lost" and "nosuchsrc" in alarms[0][1]


# --- the Pi camera, through a recording stand-in for Picamera2 -----------------------------------------------


class _Request:
    def __init__(self, cam, stamp_ns):
        self.cam, self.stamp_ns = cam, stamp_ns

    def make_array(self, name):
        assert name == "main"
        w, h = self.cam.config["main"].get("size", (64, 48))
        return np.zeros((h, w, 3), np.uint8)

    def get_metadata(self):
        return {"SensorTimestamp": self.stamp_ns, "ExposureTime": 900}

    def release(self):
        self.cam.calls.append("release")


class _Picamera2:
    """Records what it is asked; each request was exposed 5 ms before it is handed over."""

    def __init__(self, num=0):
        self.num, self.calls, self.config = num, [("open", num)], None

    def create_video_configuration(self, main, controls):
        return {"main": dict(main), "controls": dict(controls)}

    def configure(self, config):
        self.config = config
        self.calls.append("configure")

    def start(self):
        self.calls.append("start")

    def capture_request(self, wait=None):
        assert wait is False
        return "job"

    def wait(self, job, timeout=None):
        time.sleep(0.01)
        return _Request(self, time.monotonic_ns() - 5_000_000)

    def stop(self):
        self.calls.append("stop")

    def close(self):
        self.calls.append("close")


def test_picamera2_configures_the_camera_and_stamps_frames_with_the_sensor_time(monkeypatch):
    made = []
    module = SimpleNamespace(Picamera2=lambda num=0: made.append(_Picamera2(num)) or made[-1])
    monkeypatch.setitem(sys.modules, "picamera2", module)
    from edge.cameras import PiCameraSource

    src = PiCameraSource(SourceConfig(kind="picamera2", path="1", width=64, height=48, fps=30, exposure_us=800,
                                      gain=2.0))
    frames = []
    for frame in src:
        frames.append((frame, time.monotonic()))
        if len(frames) == 3:
            break
    src.close()
    cam = made[0]
    assert cam.calls[:3] == [("open", 1), "configure", "start"] and cam.calls[-2:] == ["stop", "close"]
    assert cam.config == {"main": {"format": "RGB888", "size": (64, 48)},
                          "controls": {"FrameRate": 30, "ExposureTime": 800, "AnalogueGain": 2.0}}
    assert cam.calls.count("release") >= 3  # every request goes back to the camera
    for frame, seen in frames:
        assert frame.image.shape == (48, 64, 3) and 0.004 < seen - frame.stamp < 0.5  # the sensor's time


def test_a_missing_camera_library_is_named_with_what_to_install(tmp_path, bundle_dir):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(f"bundle: {bundle_dir}\nsource:\n  kind: picamera2\n")
    out = subprocess.run([sys.executable, "-m", "qc", "config", "check", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    if out.returncode == 0:
        pytest.skip("picamera2 is installed here")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "python3-picamera2" in out.stderr and "--system-site-packages" in out.stderr


def test_camera_bench_sets_the_source_beside_a_bare_aravis_loop(fake_camera):
    from bench.camera import run_camera_benchmark

    r = run_camera_benchmark(fake_camera.id, fps=100, seconds=0.5)
    bare, ours = r["bare_aravis_loop"], r["qc_aravis_source"]
    assert bare["frames"] > 0 and ours["frames"] > 0 and ours["cpu_ms_per_frame"] > 0
    assert r["rate_vs_bare"] == pytest.approx(ours["frames_per_s"] / bare["frames_per_s"], abs=1e-3)
    assert r["meets_target"] == (r["rate_vs_bare"] >= r["target"])


def test_aravis_camera_mode_arms_the_trigger_input_and_takes_no_frame_untriggered(fake_camera):
    from edge.cameras import AravisSource

    src = AravisSource(SourceConfig(kind="aravis", path=fake_camera.id, pixel_format="Mono8",
                                    region=(0, 0, 64, 64), trigger_line="Line0"), trigger="camera")
    src.start()
    deadline = time.monotonic() + 20
    while not src.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    cam = src.cam
    armed = (cam.get_string("TriggerMode"), cam.get_string("TriggerSource"))
    src.close()
    assert armed == ("On", "Line0")
    assert src.counts["frames"] == 0  # the line was never pulsed: the camera waits for its part


class Opens(FreeRunning):
    """A camera that answers only from its `fails`-th attempt on (a slow boot, a link coming up)."""

    def __init__(self, fails):
        super().__init__()
        self.fails, self.attempts = fails, 0
        self.cfg = SourceConfig(kind="camera", path="stand-in", reconnect_min_s=0.05)

    def _open(self):
        self.attempts += 1
        if self.attempts <= self.fails:
            raise OSError("No such device")


def test_a_camera_opens_at_start_and_one_that_never_does_is_a_named_startup_error(bundle_dir, tmp_path):
    slow = Opens(fails=3)
    make_runtime(bundle_dir, tmp_path, tmp_path, slow, source__open_timeout_s=10)
    assert slow.attempts == 4 and slow.connected  # opened before the run, after three tries

    from edge.app import build_runtime
    from edge.config import validate_config
    from edge.telemetry import MemoryTelemetry

    tel = MemoryTelemetry()
    cfg = validate_config({"bundle": str(bundle_dir), "source": {"kind": "folder", "path": str(tmp_path),
                                                                 "open_timeout_s": 0.3}})
    with pytest.raises(EdgeError, match=r"camera 'stand-in' did not open within 0.3s: No such device; check the "
                                        r"camera with `qc cameras`"):
        build_runtime(cfg, telemetry=tel, source=Opens(fails=10**6))
    (alarm,) = tel.alarms
    assert alarm["kind"] == "startup_failed" and "did not open" in alarm["message"]
