"""Frame sources: a folder of images, a video file or stream, a camera (OpenCV).

Each frame carries its capture time on the monotonic clock. A frame that cannot be decoded comes through
with `image=None` and the reason, so the pipeline rejects that part fail-safe instead of losing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.config import SourceConfig
from edge.errors import EdgeError
from edge.images import IMAGE_EXTS, ImageError, decode

__all__ = ["Frame", "FolderSource", "Paced", "VideoSource", "make_source"]

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

    @property
    def image(self) -> np.ndarray | None:
        if self.encoded is not None:
            data, self.encoded = self.encoded, None
            try:
                self.pixels = decode(data, self.origin)
            except ImageError as exc:
                self.error = str(exc)
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


class FolderSource:
    """Images in name order; `live` (parts passing at a set rate) only with `rate_hz`."""

    def __init__(self, cfg: SourceConfig):
        root = Path(cfg.path)
        if not root.is_dir():
            raise EdgeError(f"source.path {cfg.path!r} is not a folder")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and "masks" not in p.parts)
        if not self.files:
            raise EdgeError(f"source.path {cfg.path!r} holds no images")
        self.cfg = cfg
        self.live = cfg.rate_hz is not None

    def __iter__(self) -> Iterator[Frame]:
        pace, seq = Paced(self.cfg.rate_hz), 0
        while True:
            for path in self.files:
                stamp = pace.wait()
                try:
                    buf = np.fromfile(path, np.uint8)
                except OSError as exc:  # removed or unreadable since the scan: a fail-safe reject, not a stop
                    yield Frame(seq, stamp, None, str(path), f"cannot read {path}: {exc.strerror or exc}")
                else:
                    yield Frame(seq, stamp, None, str(path), encoded=buf)
                seq += 1
            if not self.cfg.loop:
                return


class VideoSource:
    """A video file, an RTSP/HTTP stream or a camera; cameras and streams reopen with backoff when lost."""

    def __init__(self, cfg: SourceConfig, on_alarm: Callable[[str, str], None] | None = None):
        self.cfg = cfg
        self.on_alarm = on_alarm or (lambda kind, msg: None)
        self.camera = cfg.kind in ("camera", "stream")
        self.live = self.camera or cfg.rate_hz is not None
        self.stopped = False

    def _open(self):
        target: int | str = self.cfg.path
        if self.cfg.kind == "camera" and str(target).isdigit():
            target = int(target)
        cap = cv2.VideoCapture(target)
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height),
                            (cv2.CAP_PROP_FPS, self.cfg.fps)):
            if value:
                cap.set(prop, value)
        return cap

    def __iter__(self) -> Iterator[Frame]:
        pace = Paced(None if self.camera else self.cfg.rate_hz)
        seq, backoff = 0, self.cfg.reconnect_min_s
        cap = self._open()
        if not cap.isOpened() and not self.camera:
            raise EdgeError(f"source.path {self.cfg.path!r}: cannot open the video")
        while not self.stopped:
            ok, img = cap.read() if cap.isOpened() else (False, None)
            if ok:
                backoff = self.cfg.reconnect_min_s
                yield Frame(seq, pace.wait(), img, f"{self.cfg.path}#{seq}")
                seq += 1
                continue
            if not self.camera:
                if self.cfg.loop:
                    cap.release()
                    cap = self._open()
                    continue
                return
            self.on_alarm("camera_lost", f"{self.cfg.kind} {self.cfg.path!r} gave no frame; reopening in {backoff:.2f}s")
            cap.release()
            time.sleep(backoff)
            backoff = min(self.cfg.reconnect_max_s, backoff * 2)
            cap = self._open()
        cap.release()


def make_source(cfg: SourceConfig, on_alarm=None):
    if cfg.kind == "folder":
        return FolderSource(cfg)
    return VideoSource(cfg, on_alarm)
