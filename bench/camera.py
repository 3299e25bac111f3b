"""The capture stage on a GigE Vision camera: frames per second the Aravis source delivers (each taken from the
driver, stamped with the camera's time, converted to the pipeline's layout) and the process CPU per frame,
against a bare Aravis acquisition loop (pop a buffer, push it back) on the same camera in the same run.
Target: at least 0.9 x the bare loop's rate at 640 x 480 Mono8.

    qc bench --source aravis                # starts Debian's arv-fake-gv-camera-0.8 on 127.0.0.1
    qc bench --source aravis --camera ID    # a real camera (`qc cameras` lists the ids)
"""

from __future__ import annotations

import shutil
import subprocess
import time

from edge.cameras import AravisSource, require
from edge.config import SourceConfig
from edge.errors import EdgeError

__all__ = ["TARGET", "run_camera_benchmark"]

TARGET = 0.9
FAKE_CAMERA = "arv-fake-gv-camera-0.8"
SIZE = (640, 480)


def _bare(camera_id: str | None, fps: float, seconds: float) -> dict:
    A = require("aravis")
    A.update_device_list()
    cam = A.Camera.new(camera_id)
    cam.set_pixel_format_from_string("Mono8")
    cam.set_region(0, 0, *SIZE)
    cam.clear_triggers()
    cam.set_frame_rate(fps)
    stream = cam.create_stream(None, None)
    for _ in range(8):
        stream.push_buffer(A.Buffer.new_allocate(cam.get_payload()))
    cam.start_acquisition()
    try:
        while stream.timeout_pop_buffer(2_000_000) is None:  # the first frame: the stream runs
            pass
        n, cpu, t0 = 0, time.process_time(), time.monotonic()
        while time.monotonic() - t0 < seconds:
            buf = stream.timeout_pop_buffer(200_000)
            if buf is not None:
                n += buf.get_status() == A.BufferStatus.SUCCESS
                stream.push_buffer(buf)
        return _figures(n, time.monotonic() - t0, time.process_time() - cpu)
    finally:
        cam.stop_acquisition()


def _source(camera_id: str | None, fps: float, seconds: float) -> dict:
    src = AravisSource(SourceConfig(kind="aravis", path=camera_id or "", pixel_format="Mono8",
                                    region=(0, 0, *SIZE), fps=fps))
    frames = iter(src)
    try:
        next(frames)
        n, cpu, t0 = 0, time.process_time(), time.monotonic()
        for frame in frames:
            n += frame.image is not None
            if time.monotonic() - t0 >= seconds:
                break
        return _figures(n, time.monotonic() - t0, time.process_time() - cpu) | {"source": src.stats}
    finally:
        src.close()


def _figures(n: int, wall: float, cpu: float) -> dict:
    return {"frames": n, "frames_per_s": round(n / wall, 1), "cpu_ms_per_frame": round(1000 * cpu / max(n, 1), 3)}


def run_camera_benchmark(camera_id: str | None = None, fps: float = 200.0, seconds: float = 5.0) -> dict:
    fake = None
    if camera_id is None:
        if shutil.which(FAKE_CAMERA) is None:
            raise EdgeError(f"no --camera and no {FAKE_CAMERA} (apt install aravis-tools)")
        fake = subprocess.Popen([FAKE_CAMERA, "-i", "127.0.0.1", "-s", "QCBENCH"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        camera_id = "Aravis-Fake-QCBENCH"
    try:
        bare = _bare(camera_id, fps, seconds)
        ours = _source(camera_id, fps, seconds)
    finally:
        if fake is not None:
            fake.kill()
            fake.wait()
    ratio = ours["frames_per_s"] / bare["frames_per_s"] if bare["frames_per_s"] else 0.0
    return {"module": "bench.camera", "benchmark": "camera_aravis",
            "camera": "arv-fake-gv-camera-0.8 on 127.0.0.1" if fake else camera_id,
            "format": f"{SIZE[0]}x{SIZE[1]} Mono8", "requested_fps": fps, "seconds": seconds,
            "bare_aravis_loop": bare, "qc_aravis_source": ours, "rate_vs_bare": round(ratio, 3),
            "target": TARGET, "meets_target": ratio >= TARGET}
