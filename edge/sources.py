"""Frame sources: a folder of images and a video file (recorded), cameras and streams (live; OpenCV here,
GigE/USB3 Vision, GStreamer and the Pi camera in edge.cameras).

Each frame carries its exposure time on the monotonic clock, as near as the camera tells it. A frame that
cannot be decoded comes through with `image=None` and the reason, so the pipeline rejects that part fail-safe
instead of losing it.
"""

from __future__ import annotations

import queue
import stat
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.config import SourceConfig
from edge.errors import EdgeError
from edge.images import IMAGE_EXTS, MAX_PIXELS, ImageError, ImageTooLarge, decode

__all__ = ["Frame", "FolderSource", "LiveSource", "OpenCVCamera", "Paced", "Recorded", "VideoSource", "make_source"]

@dataclass
class Frame:
    """A captured frame. A source that reads encoded bytes (a folder) leaves them in `encoded`: `image` decodes
    them on first use, on a worker, so the capture thread only stamps and reads and decoding runs in parallel."""

    seq: int
    stamp: float  # monotonic capture time (s)
    pixels: np.ndarray | None  # None: not decoded (yet, or ever: then `error` says why)
    origin: str = ""
    error: str | None = None
    wall: float = field(default_factory=time.time)
    encoded: np.ndarray | None = None
    max_pixels: int = MAX_PIXELS  # for `encoded`: more is refused from the header, before decoding
    reason: str | None = None  # why `image` is None, where a decision reason names it (too_large)

    @property
    def image(self) -> np.ndarray | None:
        if self.encoded is not None:
            data, self.encoded = self.encoded, None
            try:
                self.pixels = decode(data, self.origin, self.max_pixels)
            except ImageError as exc:
                self.error = str(exc)
                self.reason = "too_large" if isinstance(exc, ImageTooLarge) else None
        return self.pixels


class Paced:
    """Sleeps to absolute times so a set part rate does not drift."""

    def __init__(self, rate_hz: float | None):
        self.period = 1 / rate_hz if rate_hz else 0.0
        self.next = None

    def wait(self) -> float:
        """The part's arrival time: when it was due on a paced line (a thread that wakes late does not make
        its part arrive late, so the delay counts in its latency and the gate still fires at its place),
        otherwise now."""
        now = time.monotonic()
        if not self.period:
            return now
        self.next = now if self.next is None else self.next + self.period
        if self.next > now:
            time.sleep(self.next - now)
        return self.next


class Recorded:
    """Frames read from files. In a triggered mode each trigger reads the next one: a recorded frame stands for
    the part photographed at its trigger, so it is stamped when it is read, after the trigger."""

    _reading: Iterator[Frame] | None = None

    def grab(self, after: float, timeout: float) -> Frame:
        if self._reading is None:
            self._reading = iter(self)
        frame = next(self._reading, None)
        if frame is None:
            raise EOFError("no more frames")
        frame.stamp, frame.wall = time.monotonic(), time.time()
        return frame

    def close(self) -> None:
        pass


def _irregular(path: Path) -> bool:
    """There, but not a regular file (or a link to one): a named pipe or a device would block or never end."""
    try:
        return not stat.S_ISREG(path.stat().st_mode)
    except OSError:  # gone or unreadable: reading it says so
        return False


class FolderSource(Recorded):
    """Images in name order; `live` (parts passing at a set rate) only with `rate_hz`. Only regular files are
    read: anything else among them (a named pipe, a device) is skipped with a `skipped_file` alarm."""

    def __init__(self, cfg: SourceConfig, on_alarm: Callable[[str, str], None] | None = None):
        root = Path(cfg.path)
        if not root.is_dir():
            raise EdgeError(f"source.path {cfg.path!r} is not a folder")
        self.on_alarm = on_alarm or (lambda kind, msg: None)
        named = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and "masks" not in p.parts)
        irregular = [_irregular(p) for p in named]
        self.files = [p for p, odd in zip(named, irregular) if not odd]
        self.skipped = [p.name for p, odd in zip(named, irregular) if odd]  # alarmed when the run starts reading
        if not self.files:
            raise EdgeError(f"source.path {cfg.path!r} holds no images")
        self.cfg = cfg
        self.live = cfg.rate_hz is not None

    def __iter__(self) -> Iterator[Frame]:
        pace, seq = Paced(self.cfg.rate_hz), 0
        if self.skipped:
            self.on_alarm("skipped_file", f"source.path {self.cfg.path!r}: {len(self.skipped)} entries that are not "
                          f"regular files skipped: {', '.join(self.skipped[:5])}")
        while True:
            for path in self.files:
                if _irregular(path):  # replaced since the scan
                    self.on_alarm("skipped_file", f"{path}: not a regular file any more; skipped")
                    continue
                stamp = pace.wait()
                try:
                    buf = np.fromfile(path, np.uint8)
                except OSError as exc:  # removed or unreadable since the scan: a fail-safe reject, not a stop
                    yield Frame(seq, stamp, None, str(path), f"cannot read {path}: {exc.strerror or exc}")
                else:
                    yield Frame(seq, stamp, None, str(path), encoded=buf, max_pixels=self.cfg.max_pixels)
                seq += 1
            if not self.cfg.loop:
                return


class VideoSource(Recorded):
    """A video file, frame by frame; `live` (parts passing at a set rate) only with `rate_hz`."""

    def __init__(self, cfg: SourceConfig):
        self.cfg = cfg
        self.live = cfg.rate_hz is not None

    def __iter__(self) -> Iterator[Frame]:
        pace, seq = Paced(self.cfg.rate_hz), 0
        while True:
            cap = cv2.VideoCapture(self.cfg.path)
            if not cap.isOpened():
                raise EdgeError(f"source.path {self.cfg.path!r}: cannot open the video")
            while (got := cap.read())[0]:
                yield Frame(seq, pace.wait(), got[1], f"{self.cfg.path}#{seq}")
                seq += 1
            cap.release()
            if not self.cfg.loop:
                return


class LiveSource:
    """A camera; each frame is stamped with its exposure time (monotonic clock). Free-running, every frame is a
    part: iteration reads them in order on the caller's thread. Triggered, a reader thread (`start`) takes
    every frame from the driver as it arrives, so that no old frame waits in the driver's buffers, and keeps
    the newest few; `grab(after)` gives the first frame exposed at or after the trigger, and first sends the
    camera a software trigger where it takes one. A lost camera is alarmed and reopened with backoff; it never
    ends the run.

    A camera kind implements `_open`, `_read` (one frame or None within a timeout; raises when the camera is
    gone), `_close`, and, where the camera takes one, `_trigger`."""

    live = True
    takes_trigger = False
    FIX = "check the camera with `qc cameras`"  # what to try when it does not open at start
    KEEP = 64  # frames kept between triggers; beyond, the oldest are dropped (counted: between parts, normal)

    def __init__(self, cfg: SourceConfig, on_alarm: Callable[[str, str], None] | None = None):
        self.cfg = cfg
        self.on_alarm = on_alarm or (lambda kind, msg: None)
        self.counts: Counter = Counter()
        self.frames: deque[Frame] = deque()
        self.ready = threading.Condition()
        self.stopped = threading.Event()
        self.connected = False
        self.lost = threading.Event()  # set by whoever notices first (a failed trigger); the reader reopens
        self._thread: threading.Thread | None = None
        self._triggers: queue.Queue = queue.Queue()
        self._seq = 0

    @property
    def name(self) -> str:
        return f"{self.cfg.kind} {self.cfg.path!r}"

    def _open(self) -> None:
        raise NotImplementedError

    def _read(self, timeout: float) -> tuple[np.ndarray | None, float, str | None] | None:
        """(image, exposure stamp, error) of the next frame, None when none came within `timeout`."""
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def _trigger(self) -> None:
        raise NotImplementedError

    def _apply_exposure(self) -> None:
        raise EdgeError(f"{self.name}: this camera kind cannot change its exposure or gain")

    def set_exposure(self, exposure_us: float | None, gain: float | None) -> None:
        """A recipe's exposure and gain: set now when the camera is open, and kept for every reopen."""
        self.cfg = self.cfg.model_copy(update={k: v for k, v in (("exposure_us", exposure_us), ("gain", gain))
                                               if v is not None})
        if self.connected:
            self._apply_exposure()

    @property
    def stats(self) -> dict:
        return dict(self.counts) | {"connected": self.connected}

    def open(self, timeout: float) -> None:
        """Open the camera before the run. One that does not open within `timeout` (time for a slow boot or
        link) is a start-up error naming the camera, its library and the fix; once open, a loss is reopened."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._open()
                break
            except Exception as exc:
                if time.monotonic() >= deadline or self.stopped.wait(self.cfg.reconnect_min_s):
                    raise EdgeError(f"{self.name} did not open within {timeout:g}s: {exc}; {self.FIX}") from None
        self.counts["opened"] += 1
        self.connected = True

    def start(self) -> None:
        """Open the camera and keep reading it in the background, for `grab` (triggered capture)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._reader, name="camera", daemon=True)
            self._thread.start()
            if self.takes_trigger:
                threading.Thread(target=self._send_triggers, name="camera-trigger", daemon=True).start()

    def close(self) -> None:
        self.stopped.set()
        self._triggers.put(None)
        with self.ready:
            self.ready.notify_all()
        if self._thread not in (None, threading.current_thread()):
            self._thread.join(timeout=10)

    def _frames(self) -> Iterator[Frame]:
        """Frames as the camera delivers them until `close`; a lost camera is alarmed and reopened."""
        backoff = self.cfg.reconnect_min_s  # grows while the camera fails; back to the start with a frame
        try:
            while not self.stopped.is_set():
                try:
                    if not self.connected:
                        self._open()
                        self.counts["opened"] += 1
                        self.lost.clear()
                        self.connected = True
                    if self.lost.is_set():
                        raise EdgeError("it did not answer a trigger")
                    got = self._read(0.2)
                except Exception as exc:
                    if self.connected:
                        self.counts["lost"] += 1
                    self.connected = False
                    self._close_quietly()
                    self.on_alarm("camera_lost", f"{self.name}: {exc}; reopening in {backoff:.2f}s")
                    self.stopped.wait(backoff)
                    backoff = min(self.cfg.reconnect_max_s, backoff * 2)
                    continue
                if got is not None:
                    backoff = self.cfg.reconnect_min_s
                    yield self._frame(*got)
        finally:
            self.connected = False
            self._close_quietly()

    def _close_quietly(self) -> None:
        try:
            self._close()
        except Exception:  # a camera that is gone cannot be closed cleanly; it is reopened afresh
            pass

    def _frame(self, image: np.ndarray | None, stamp: float, error: str | None) -> Frame:
        frame = Frame(self._seq, stamp, image, f"{self.name}#{self._seq}", error,
                      wall=time.time() - (time.monotonic() - stamp))
        self._seq += 1
        self.counts["frames"] += 1
        if error:
            self.counts["incomplete"] += 1
            self.on_alarm("frame_incomplete", f"{self.name} frame {frame.seq}: {error}")
        return frame

    def _reader(self) -> None:
        for frame in self._frames():
            with self.ready:
                if len(self.frames) >= self.KEEP:
                    self.frames.popleft()
                    self.counts["dropped"] += 1
                self.frames.append(frame)
                self.ready.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        """Free-running: every frame, in order, read on the caller's thread (no hand-over between threads)."""
        if self._thread is not None:
            raise EdgeError(f"{self.name} is already read in the background for triggered parts")
        yield from self._frames()

    def _send_triggers(self) -> None:
        """Trigger commands, in order, off the capture thread: a camera that went away answers a command only
        after the driver's retries (seconds), while the parts behind it must still be decided in time."""
        while (stamp := self._triggers.get()) is not None:
            if not self.connected or self.lost.is_set():
                continue
            try:
                self._trigger()
                self.counts["triggers"] += 1
            except Exception as exc:
                self.counts["trigger_failed"] += 1
                self.lost.set()
                with self.ready:
                    self.ready.notify_all()
                self.on_alarm("camera_lost", f"{self.name}: trigger at {stamp:.3f} failed: {exc}")

    def grab(self, after: float, timeout: float) -> Frame | None:
        """The first frame exposed at or after `after` (monotonic s), or None when none came by `after +
        timeout` or the camera is lost: frames exposed before the trigger are discarded."""
        self.start()
        if self.takes_trigger and self.connected and not self.lost.is_set():
            self._triggers.put(after)
        deadline = after + timeout
        with self.ready:
            while True:
                while self.frames and self.frames[0].stamp < after:
                    self.frames.popleft()
                    self.counts["before_trigger"] += 1
                if self.frames:
                    return self.frames.popleft()
                left = deadline - time.monotonic()
                if left <= 0 or self.stopped.is_set() or not self.connected or self.lost.is_set():
                    self.counts["no_frame"] += 1
                    return None
                self.ready.wait(left)


class OpenCVCamera(LiveSource):
    """A camera (index or /dev/videoN) or an RTSP/HTTP stream through OpenCV. It gives no exposure time: a frame
    is stamped when the driver hands it over, and the reader takes each at once, so that is within a frame
    time of its exposure."""

    cap = None

    @property
    def FIX(self) -> str:  # noqa: N802
        if self.cfg.kind == "stream":
            return "check the URL and that the stream answers (ffprobe URL), through OpenCV's FFmpeg"
        return "check the device with `qc cameras` and v4l2-ctl --list-devices, and that this user is in the video group"

    def _open(self) -> None:
        target: int | str = self.cfg.path
        if self.cfg.kind == "camera" and str(target).isdigit():
            target = int(target)
        cap = cv2.VideoCapture(target)
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height),
                            (cv2.CAP_PROP_FPS, self.cfg.fps)):
            if value:
                cap.set(prop, value)
        if not cap.isOpened():
            cap.release()
            raise EdgeError("cannot open it")
        self.cap = cap

    def _read(self, timeout: float):
        ok, img = self.cap.read()
        if not ok:
            raise EdgeError("it gave no frame")
        return img, time.monotonic(), None

    def _close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def make_source(cfg: SourceConfig, on_alarm=None, trigger: str = "free"):
    """The source for `source.kind`; camera kinds beyond OpenCV come from edge.cameras (their libraries are
    imported only when chosen). `trigger` is `trigger.mode`: a camera that takes triggers is set up for it."""
    if cfg.kind == "folder":
        return FolderSource(cfg, on_alarm)
    if cfg.kind == "video":
        return VideoSource(cfg)
    if cfg.kind in ("camera", "stream"):
        return OpenCVCamera(cfg, on_alarm)
    from edge import cameras

    return cameras.make(cfg, on_alarm, trigger)
