"""The cameras inspection lines use, each a LiveSource (edge.sources): GigE Vision and USB3 Vision through
Aravis, any GStreamer pipeline (a Jetson's CSI camera: nvarguscamerasrc), and the Raspberry Pi camera through
Picamera2. Their libraries come from the system's packages and are imported only for the kind chosen; a
missing one is named with the packages that bring it.

Frame times: Aravis gives the camera's own timestamp (mapped to the monotonic clock), GStreamer the buffer's
capture time on the pipeline clock (the monotonic clock), Picamera2 the sensor's start-of-frame time (the
monotonic clock).
"""

from __future__ import annotations

import importlib
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from edge.config import BOX_TRIGGERED, SourceConfig
from edge.errors import EdgeError
from edge.sources import LiveSource

__all__ = ["AravisSource", "DeviceClock", "GstSource", "PiCameraSource", "discover", "make", "require"]

_PYGOBJECT = ("PyGObject in the virtual environment (pip install 'qc-inspect[camera]', which builds with "
              "libgirepository1.0-dev libcairo2-dev pkg-config; or a venv made with --system-site-packages from "
              "the system's python3 with python3-gi)")
NEEDS = {
    "aravis": ("Aravis", "0.8", f"apt install gir1.2-aravis-0.8, and {_PYGOBJECT}"),
    "gstreamer": ("Gst", "1.0", "apt install gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 "
                  f"gstreamer1.0-plugins-base, and {_PYGOBJECT}"),
    "picamera2": ("picamera2", None, "apt install python3-picamera2 (Raspberry Pi OS), and a virtual environment "
                  "made with --system-site-packages so that it sees it"),
}


def require(kind: str):
    """The library module for a camera kind, or an EdgeError naming what to install."""
    name, version, install = NEEDS[kind]
    try:
        if version is None:
            return importlib.import_module(name)
        import gi

        gi.require_version(name, version)
        if name == "Gst":  # the appsink's own methods (try_pull_sample) come with GstApp
            gi.require_version("GstApp", version)
            importlib.import_module("gi.repository.GstApp")
        return importlib.import_module(f"gi.repository.{name}")
    except (ImportError, ValueError) as exc:
        raise EdgeError(f"source.kind {kind} needs {name}{' ' + version if version else ''} ({exc}): "
                        f"{install}") from None


def make(cfg: SourceConfig, on_alarm, trigger: str) -> LiveSource:
    kinds = {"aravis": AravisSource, "gstreamer": GstSource, "picamera2": PiCameraSource}
    return kinds[cfg.kind](cfg, on_alarm, trigger)


class DeviceClock:
    """A camera's timestamps (its own clock, ns) on the monotonic clock. The offset is the smallest (arrival -
    timestamp) over the last `window` frames: a frame's stamp is then late by at least the shortest readout and
    transfer seen, never early. (Where the camera latches its clock on command, that is more exact; the
    trigger itself never depends on it: a triggered camera exposes after the command.)"""

    def __init__(self, window: int = 256):
        self.offsets: deque[float] = deque(maxlen=window)

    def __call__(self, device_ns: int, arrival: float) -> float:
        self.offsets.append(arrival - device_ns / 1e9)
        return device_ns / 1e9 + min(self.offsets)


_BAYER = {"BayerRG8": cv2.COLOR_BayerRGGB2BGR, "BayerGR8": cv2.COLOR_BayerGRBG2BGR,
          "BayerGB8": cv2.COLOR_BayerGBRG2BGR, "BayerBG8": cv2.COLOR_BayerBGGR2BGR}
PIXEL_FORMATS = ("Mono8", "RGB8", "BGR8", *_BAYER)


def to_bgr(data: bytes, width: int, height: int, pixel_format: str) -> np.ndarray:
    """A GenICam 8-bit frame as OpenCV BGR (Mono8 stays one channel; the pipeline takes gray)."""
    flat = np.frombuffer(data, np.uint8)
    if pixel_format == "Mono8":
        return flat[: width * height].reshape(height, width)
    if pixel_format in _BAYER:
        return cv2.cvtColor(flat[: width * height].reshape(height, width), _BAYER[pixel_format])
    rgb = flat[: width * height * 3].reshape(height, width, 3)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if pixel_format == "RGB8" else rgb.copy()


class AravisSource(LiveSource):
    """A GigE Vision or USB3 Vision camera. Free-running at `fps`; in part_sensor or encoder mode it exposes on
    a software trigger the box sends at each part; in `camera` mode on its own trigger input (`trigger_line`)."""

    FIX = ("list the cameras with `qc cameras` (arv-tool-0.8 on the same link); check the cable, the camera's IP "
           "address and that no other program holds the camera")
    STREAM_FAULTS = ("n_failures", "n_underruns", "n_missing_frames", "n_timeouts", "n_aborted")

    def __init__(self, cfg: SourceConfig, on_alarm=None, trigger: str = "free"):
        super().__init__(cfg, on_alarm)
        self.Aravis = require("aravis")
        self.mode = trigger
        self.takes_trigger = trigger in BOX_TRIGGERED
        self.clock = DeviceClock()
        self.cam = self.stream = None
        self.control_lost = False
        self.faults = dict.fromkeys(("n_completed_buffers", *self.STREAM_FAULTS), 0)  # at the last check
        self._next_check = 0.0

    @property
    def name(self) -> str:
        return f"aravis {self.cfg.path or '(first camera)'}"

    def _apply_exposure(self, cam=None) -> None:
        cam = cam or self.cam
        if self.cfg.exposure_us:
            cam.set_exposure_time(self.cfg.exposure_us)
        if self.cfg.gain is not None:
            cam.set_gain(self.cfg.gain)

    def _open(self) -> None:
        A, c = self.Aravis, self.cfg
        A.update_device_list()  # opened without a fresh list, a camera can stream to another interface's address
        cam = A.Camera.new(c.path or None)
        if c.pixel_format:
            cam.set_pixel_format_from_string(c.pixel_format)
        fmt = cam.get_pixel_format_as_string()
        if fmt not in PIXEL_FORMATS:
            raise EdgeError(f"pixel format {fmt} is not one of {', '.join(PIXEL_FORMATS)} (source.pixel_format)")
        if c.region:
            cam.set_region(*c.region)
        elif c.width or c.height:
            x, y, w, h = cam.get_region()
            cam.set_region(x, y, c.width or w, c.height or h)
        self._apply_exposure(cam)
        if self.mode == "camera":
            cam.set_trigger(c.trigger_line)
        elif self.takes_trigger:
            cam.set_trigger("Software")
        else:
            cam.clear_triggers()
            if c.fps:
                cam.set_frame_rate(c.fps)
        cam.set_acquisition_mode(A.AcquisitionMode.CONTINUOUS)
        stream = cam.create_stream(None, None)
        for _ in range(c.buffers):
            stream.push_buffer(A.Buffer.new_allocate(cam.get_payload()))
        self.control_lost = False
        # Aravis's heartbeat thread says when this camera stops answering (a camera replaced since is not told)
        cam.get_device().connect("control-lost", lambda *_: self.cam is cam and setattr(self, "control_lost", True))
        cam.start_acquisition()
        self.cam, self.stream, self.format = cam, stream, fmt
        self.faults = dict.fromkeys(self.faults, 0)

    def _read(self, timeout: float):
        if self.control_lost:
            raise EdgeError("the camera stopped answering (control lost)")
        if time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + 1.0
            self._check_stream()
        buf = self.stream.timeout_pop_buffer(int(timeout * 1e6))
        if buf is None:
            return None
        try:
            arrival = time.monotonic() - (time.time() - buf.get_system_timestamp() / 1e9)
            device_ns = buf.get_timestamp()
            stamp = self.clock(device_ns, arrival) if device_ns else arrival
            status = buf.get_status()
            if status != self.Aravis.BufferStatus.SUCCESS:
                return None, stamp, f"incomplete buffer ({status.value_nick})"
            return to_bgr(buf.get_data(), buf.get_image_width(), buf.get_image_height(), self.format), stamp, None
        finally:
            self.stream.push_buffer(buf)

    def _check_stream(self) -> None:
        """Frames the stream lost or could not fill since the last check: counted and alarmed."""
        now = {k: self.stream.get_info_uint64_by_name(k) for k in ("n_completed_buffers", *self.STREAM_FAULTS)}
        grown = {k: now[k] - self.faults[k] for k in self.STREAM_FAULTS if now[k] > self.faults[k]}
        self.faults = now
        if grown:
            self.counts.update(grown)
            self.on_alarm("frames_lost", f"{self.name}: " + ", ".join(f"{k[2:]} +{v}" for k, v in grown.items()))

    def _trigger(self) -> None:
        self.cam.software_trigger()

    def _close(self) -> None:
        if self.stream is not None:
            self._check_stream()
        cam, self.cam, self.stream = self.cam, None, None
        if cam is not None:
            cam.stop_acquisition()

    @property
    def stats(self) -> dict:
        """The source's counts, with the stream's (this connection's, as of its last check)."""
        return super().stats | {k: v for k, v in self.faults.items() if k == "n_completed_buffers"}


class GstSource(LiveSource):
    """A GStreamer pipeline (`source.pipeline`, ideally a live source) ending in an appsink that hands BGR frames
    over; each frame is stamped with its buffer's capture time on the pipeline clock."""

    FIX = "try source.pipeline with gst-launch-1.0 on this box (its elements from gst-inspect-1.0)"

    def __init__(self, cfg: SourceConfig, on_alarm=None, trigger: str = "free"):
        super().__init__(cfg, on_alarm)
        self.Gst = require("gstreamer")
        self.Gst.init(None)
        self.pipe = self.sink = self.bus = None

    @property
    def name(self) -> str:
        return f"gstreamer {self.cfg.pipeline.split('!')[0].strip()}"

    def _open(self) -> None:
        Gst = self.Gst
        description = (f"{self.cfg.pipeline} ! videoconvert ! video/x-raw,format=BGR ! "
                       f"appsink name=qc_frames max-buffers={self.cfg.buffers} drop=false sync=false")
        try:
            pipe = Gst.parse_launch(description)
        except Exception as exc:  # GLib.Error: syntax, an element not installed
            raise EdgeError(f"source.pipeline: {getattr(exc, 'message', exc)}") from None
        self.pipe, self.sink, self.bus = pipe, pipe.get_by_name("qc_frames"), pipe.get_bus()
        if pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self._raise_bus_error("the pipeline would not start")

    def _raise_bus_error(self, default: str | None = None) -> None:
        Gst = self.Gst
        msg = self.bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.EOS)
        if msg is not None and msg.type == Gst.MessageType.ERROR:
            raise EdgeError(msg.parse_error()[0].message)
        if msg is not None:
            raise EdgeError("the pipeline reached its end")
        if default:
            raise EdgeError(default)

    def _read(self, timeout: float):
        Gst = self.Gst
        self._raise_bus_error()
        sample = self.sink.try_pull_sample(int(timeout * Gst.SECOND))
        if sample is None:
            if self.sink.is_eos():
                raise EdgeError("the pipeline reached its end")
            return None
        buf, caps = sample.get_buffer(), sample.get_caps().get_structure(0)
        w, h = caps.get_value("width"), caps.get_value("height")
        ok, info = buf.map(Gst.MapFlags.READ)
        if not ok:
            return None, time.monotonic(), "a buffer could not be mapped"
        try:  # rows may be padded to 4 bytes
            rows = np.frombuffer(info.data, np.uint8).reshape(h, -1)
            image = rows[:, : w * 3].reshape(h, w, 3).copy()
        finally:
            buf.unmap(info)
        return image, self._stamp(buf.pts), None

    def _stamp(self, pts: int) -> float:
        """The buffer's capture time: base time + timestamp on the pipeline clock, when that is the system's
        monotonic clock (GStreamer's default); otherwise when it arrived."""
        Gst, clock = self.Gst, self.pipe.get_clock()
        if (pts != Gst.CLOCK_TIME_NONE and isinstance(clock, Gst.SystemClock)
                and clock.props.clock_type == Gst.ClockType.MONOTONIC):
            return (self.pipe.get_base_time() + pts) / 1e9
        return time.monotonic()

    def _close(self) -> None:
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            pipe.set_state(self.Gst.State.NULL)


class PiCameraSource(LiveSource):
    """The Raspberry Pi camera through Picamera2 (libcamera), free-running at `fps`; each frame is stamped with
    the sensor's start-of-frame time (SensorTimestamp, the monotonic clock)."""

    FIX = "check the ribbon cable and that `rpicam-hello --list-cameras` lists the camera"

    def __init__(self, cfg: SourceConfig, on_alarm=None, trigger: str = "free"):
        super().__init__(cfg, on_alarm)
        self.Picamera2 = require("picamera2").Picamera2
        self.cam = self.job = None

    @property
    def name(self) -> str:
        return f"picamera2 {self.cfg.path or '0'}"

    def _open(self) -> None:
        c = self.cfg
        if c.path and not c.path.isdigit():
            raise EdgeError(f"source.path {c.path!r}: picamera2 takes a camera number")
        cam = self.Picamera2(int(c.path or 0))
        main = {"format": "RGB888"}  # libcamera's RGB888 is B, G, R in memory: OpenCV's BGR
        if c.width and c.height:
            main["size"] = (c.width, c.height)
        controls = {k: v for k, v in (("FrameRate", c.fps), ("ExposureTime", c.exposure_us and int(c.exposure_us)),
                                      ("AnalogueGain", c.gain)) if v is not None}
        cam.configure(cam.create_video_configuration(main=main, controls=controls))
        cam.start()
        self.cam, self.job = cam, None

    def _apply_exposure(self) -> None:
        self.cam.set_controls({k: v for k, v in (("ExposureTime", self.cfg.exposure_us and int(self.cfg.exposure_us)),
                                                 ("AnalogueGain", self.cfg.gain)) if v is not None})

    def _read(self, timeout: float):
        if self.job is None:
            self.job = self.cam.capture_request(wait=False)
        try:
            request = self.cam.wait(self.job, timeout=timeout)
        except TimeoutError:
            return None
        self.job = None
        try:
            image, meta = request.make_array("main"), request.get_metadata()
        finally:
            request.release()
        ts = meta.get("SensorTimestamp")
        return image, ts / 1e9 if ts else time.monotonic(), None

    def _close(self) -> None:
        cam, self.cam, self.job = self.cam, None, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()


def discover() -> dict:
    """What `qc cameras` lists: GigE/USB3 Vision cameras, V4L2 devices, Pi cameras, GStreamer camera sources;
    for a library that is missing, what to install."""
    found: dict = {}
    try:
        A = require("aravis")
        A.update_device_list()
        found["aravis"] = [{"id": A.get_device_id(i), "vendor": A.get_device_vendor(i),
                            "model": A.get_device_model(i), "serial": A.get_device_serial_nbr(i),
                            "address": A.get_device_address(i), "protocol": A.get_device_protocol(i)}
                           for i in range(A.get_n_devices())]
    except EdgeError as exc:
        found["aravis"] = {"unavailable": str(exc)}
    v4l2 = Path("/sys/class/video4linux")
    found["v4l2"] = [{"device": f"/dev/{d.name}", "name": (d / "name").read_text().strip()}
                     for d in sorted(v4l2.glob("video*")) if (d / "name").exists()] if v4l2.is_dir() else []
    try:
        found["picamera2"] = [{k: v for k, v in info.items() if k in ("Num", "Model", "Id", "Location")}
                              for info in require("picamera2").Picamera2.global_camera_info()]
    except EdgeError as exc:
        found["picamera2"] = {"unavailable": str(exc)}
    try:
        Gst = require("gstreamer")
        Gst.init(None)
        found["gstreamer"] = [e for e in ("nvarguscamerasrc", "libcamerasrc", "v4l2src", "videotestsrc")
                              if Gst.ElementFactory.find(e) is not None]
    except EdgeError as exc:
        found["gstreamer"] = {"unavailable": str(exc)}
    return found
