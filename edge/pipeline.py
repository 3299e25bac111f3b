"""The inspection pipeline: capture -> preprocess -> inference + decision -> actions, on three threads with
bounded queues. Every part that passes the camera gets exactly one decision, published and counted.

A part that cannot be inspected (corrupt frame, model error, queue full, past its deadline, paused) is
rejected fail-safe with its reason, unless the config passes such parts on purpose.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.bundle import Bundle, load_bundle
from edge.classifiers import Classifier, make_classifier
from edge.config import EdgeConfig
from edge.decision import Decision, decide, failsafe
from edge.errors import QCError
from edge.localize import box, defect_map
from edge.preprocess import prepare
from edge.sources import Frame, make_source
from edge.stats import Stats
from edge.store import RejectStore
from edge.telemetry import MemoryTelemetry, Telemetry
from firmware_io.gpio import Encoder, PartSensor, RealClock, RejectGate, StackLight, make_backend

__all__ = ["Runtime", "verified_classifier"]

_STOP = object()


@dataclass
class _Part:
    frame: Frame
    stamp: float  # capture time (s) or encoder count, what the gate fires from
    rgb: np.ndarray | None = None
    t: dict = field(default_factory=dict)


def verified_classifier(path: Path, backend: str, num_threads: int, sha256: str | None = None):
    """Load a bundle and prove it works (sha256, tensors, one inference) before anyone relies on it."""
    bundle = load_bundle(path)
    if sha256 and bundle.sha256 != sha256:
        raise QCError(f"{path}: sha256 is {bundle.sha256}, not the {sha256} asked for")
    clf = make_classifier(bundle, backend, num_threads)
    h, w = bundle.input_size
    scores = clf.infer(np.zeros((h, w, 3), np.uint8)).scores
    if not np.all(np.isfinite(scores)) or len(scores) != len(bundle.labels):
        raise QCError(f"{path}: a test inference gave {scores}, not {len(bundle.labels)} finite scores")
    return bundle, clf


class Runtime:
    def __init__(self, cfg: EdgeConfig, telemetry: Telemetry | None = None, gpio=None, clock=None, source=None):
        self.cfg = cfg
        self.bundle, self.classifier = verified_classifier(cfg.bundle, cfg.classifier.backend,
                                                           cfg.classifier.num_threads)
        self.threshold = cfg.decision.threshold if cfg.decision.threshold is not None else self.bundle.threshold
        self.telemetry = telemetry or MemoryTelemetry()
        self.stats = Stats()
        self.boot = uuid.uuid4().hex[:8]
        self.clock = clock or RealClock()
        self.gpio = gpio or make_backend(cfg.gpio.backend, self.clock)
        self.encoder = Encoder(self.gpio, cfg.gpio.encoder) if cfg.gpio.encoder else None
        self.gate = RejectGate(self.gpio, cfg.gpio.gate, self.clock, self.encoder)
        self.light = StackLight(self.gpio, cfg.gpio.stack_light)
        self.store = RejectStore(cfg.store.dir, cfg.store.max_files, cfg.store.sample_passes) if cfg.store.dir else None
        self.source = source if source is not None else make_source(cfg.source, on_alarm=self.alarm)
        self.triggers: queue.Queue = queue.Queue()
        if cfg.trigger.mode == "part_sensor":
            PartSensor(self.gpio, cfg.gpio.part_sensor, self.triggers.put)
        elif cfg.trigger.mode == "encoder":
            self.encoder.listeners.append(self._on_count)
        self.q_pre: queue.Queue = queue.Queue(cfg.pipeline.queue_size)
        self.q_inf: queue.Queue = queue.Queue(cfg.pipeline.queue_size)
        self.stop_event = threading.Event()
        self.paused = threading.Event()
        self.snapshot_next = threading.Event()
        self._pending: tuple[Bundle, Classifier] | None = None
        self._store_lock = threading.Lock()
        self._captured = 0
        self._watch = self._bundle_mtime()
        self.light.set("running")

    def _on_count(self, count: int) -> None:
        if count % self.cfg.trigger.pitch_counts == 0:  # a part every pitch: its stamp is the count
            self.triggers.put(count)

    # --- actions ---------------------------------------------------------------------------------------

    def alarm(self, kind: str, message: str, **extra) -> None:
        self.stats.count(f"alarm_{kind}")
        self._tell(self.telemetry.alarm, kind, message, **extra)
        if kind != "late":
            self.light.set("warning")

    def _tell(self, fn, *args, **kwargs) -> None:
        """Hand an event to telemetry. If telemetry itself fails (a full disk under the spool), say so on
        stderr and count it: the part has its decision and the gate its pulse either way."""
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            self.stats.count("telemetry_failed")
            print(f"[qc] telemetry failed: {exc}", file=sys.stderr, flush=True)

    def _finish(self, part: _Part, d: Decision, bbox=None) -> None:
        frame = part.frame
        reason = d.reason
        if d.decision == "reject":
            try:
                sched = self.gate.schedule(part.stamp)
            except QCError as exc:  # the part is decided and published all the same; people must act
                reason = "gate_overflow"
                self.alarm("gate_overflow", f"part {frame.seq} not rejected: {exc}", seq=frame.seq)
            else:
                if sched.late:
                    reason = "late"
                    self.alarm("late", f"part {frame.seq} decided after its reject window"
                               + ("" if sched.fired else "; not fired (gate.late_policy skip)"), seq=frame.seq)
        now = time.monotonic()
        latency = (now - frame.stamp) * 1000
        event = {
            "id": f"{self.cfg.station}-{self.boot}-{frame.seq:08d}",
            "seq": frame.seq, "ts": frame.wall, "line": self.cfg.line, "station": self.cfg.station,
            "label": d.label, "score": None if np.isnan(d.score) else round(d.score, 5), "scores": d.scores,
            "decision": d.decision, "reason": reason, "latency_ms": round(latency, 2),
            "model": {"name": self.bundle.meta["name"], "sha256": self.bundle.sha256},
            "threshold": self.threshold, "box": bbox, "source": frame.origin,
        }
        if frame.error:
            event["error"] = frame.error
        self._tell(self.telemetry.inspection, event)
        if self.store:
            with self._store_lock:  # parts finish on three threads
                if self.store.wants(d.decision) or self.snapshot_next.is_set():
                    self.snapshot_next.clear()
                    try:
                        self.store.save(frame.image, event)
                    except Exception as exc:  # a full disk loses the review copy, not the line
                        self.alarm("store_failed", f"reject of part {frame.seq} not saved: {exc}")
        self.stats.add(d.decision, reason, {"end_to_end": latency, **part.t})

    # --- threads -----------------------------------------------------------------------------------------

    def _capture(self, max_parts: int | None) -> None:
        try:
            for frame in self.source:
                stamp = frame.stamp
                if self.cfg.trigger.mode != "free":
                    stamp = self._next_trigger()
                    if stamp is None:
                        break
                    if self.cfg.trigger.mode == "part_sensor":
                        frame.wall = time.time() - (time.monotonic() - stamp)
                        frame.stamp = stamp
                if self.stop_event.is_set():
                    break
                part = _Part(frame, stamp)
                self._captured += 1
                if self.paused.is_set():
                    self._finish(part, failsafe("paused", self.cfg.decision.on_error))
                else:
                    try:
                        self.q_pre.put_nowait(part)
                    except queue.Full:  # the line outruns the model: decide now, never drop
                        self._finish(part, failsafe("overflow", self.cfg.decision.on_error))
                if max_parts and self._captured >= max_parts:
                    break
        except Exception as exc:  # a source that dies is an alarm, not a silent stop
            self.alarm("camera_lost", f"frame source failed: {exc}")
        finally:
            self.q_pre.put(_STOP)

    def _next_trigger(self):
        while not self.stop_event.is_set():
            try:
                return self.triggers.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _preprocess(self) -> None:
        h, w = self.bundle.input_size
        method = self.bundle.meta["input"].get("resize", "area")
        while (part := self.q_pre.get()) is not _STOP:
            t0 = time.monotonic()
            if part.frame.image is None:
                self._finish(part, failsafe("failsafe", self.cfg.decision.on_error))
                continue
            try:
                part.rgb = prepare(part.frame.image, (h, w), method, bgr=self.cfg.source.bgr, roi=self.cfg.pipeline.roi)
            except Exception as exc:
                part.frame.error = f"preprocess: {exc}"
                self._finish(part, failsafe("failsafe", self.cfg.decision.on_error))
                continue
            part.t["preprocess"] = (time.monotonic() - t0) * 1000
            self.q_inf.put(part)
        self.q_inf.put(_STOP)

    def _infer(self) -> None:
        deadline = self.cfg.decision.deadline_ms / 1000
        while (part := self.q_inf.get()) is not _STOP:
            if self._pending is not None:
                self.bundle, self.classifier = self._pending  # swapped between frames
                self._pending = None
            if time.monotonic() - part.frame.stamp > deadline:
                part.frame.error = f"not inspected within decision.deadline_ms {self.cfg.decision.deadline_ms}"
                self._finish(part, failsafe("failsafe", self.cfg.decision.on_error))
                continue
            t0 = time.monotonic()
            try:
                result = self.classifier.infer(part.rgb)
                d = decide(result.scores, self.bundle.labels, self.threshold, self.bundle.good_index,
                           self.cfg.decision.class_thresholds)
            except Exception as exc:
                part.frame.error = f"model: {exc}"
                self.alarm("model_failed", f"inference failed on part {part.frame.seq}: {exc}")
                self._finish(part, failsafe("failsafe", self.cfg.decision.on_error))
                continue
            part.t["infer"] = (time.monotonic() - t0) * 1000
            bbox = None
            if d.decision == "reject" and result.cam is not None and part.frame.image is not None:
                roi = self.cfg.pipeline.roi
                shape = (roi[3], roi[2]) if roi else part.frame.image.shape[:2]
                try:
                    bbox = box(defect_map(result.cam, self.bundle.good_index), shape,
                               offset=(roi[0], roi[1]) if roi else (0, 0))
                except Exception as exc:  # the decision stands without a box
                    self.alarm("localize_failed", f"part {part.frame.seq}: {exc}")
            self._finish(part, d, bbox)

    # --- control -----------------------------------------------------------------------------------------

    def _bundle_mtime(self) -> float:
        files = [self.cfg.bundle / "model.json", self.cfg.bundle / self.bundle.meta["model_file"]]
        return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)

    def reload(self, path: Path | None = None, sha256: str | None = None) -> dict:
        """Verify a bundle fully, then swap it in between frames; on failure keep the old one and alarm."""
        path = Path(path or self.cfg.bundle)
        try:
            bundle, clf = verified_classifier(path, self.cfg.classifier.backend, self.cfg.classifier.num_threads,
                                              sha256)
        except Exception as exc:
            self.alarm("reload_failed", f"kept model {self.bundle.meta['name']}: {exc}")
            return {"ok": False, "error": str(exc)}
        if bundle.labels != self.bundle.labels:
            msg = f"labels {bundle.labels} differ from the running model's {self.bundle.labels}"
            self.alarm("reload_failed", msg)
            return {"ok": False, "error": msg}
        self._pending = (bundle, clf)
        if self.cfg.decision.threshold is None:
            self.threshold = bundle.threshold
        return {"ok": True, "model": bundle.meta["name"], "sha256": bundle.sha256}

    def command(self, name: str, payload: dict) -> dict:
        """Commands from telemetry: threshold, pause, resume, reload, snapshot. Validated; never raises."""
        if name == "threshold":
            value = payload.get("value")
            lo, hi = self.cfg.mqtt.threshold_limits
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
                return {"ok": False, "error": f"threshold value must be a number in [{lo}, {hi}], got {value!r}"}
            self.threshold = float(value)
            return {"ok": True, "threshold": self.threshold}
        if name == "pause":
            self.paused.set()
            self.light.set("warning")
            return {"ok": True, "paused": True}
        if name == "resume":
            self.paused.clear()
            self.light.set("running")
            return {"ok": True, "paused": False}
        if name == "reload":
            path, sha = payload.get("path"), payload.get("sha256")
            if not isinstance(path, str) or (sha is not None and not isinstance(sha, str)):
                return {"ok": False, "error": "reload needs {\"path\": str, \"sha256\": str}"}
            return self.reload(Path(path), sha)
        if name == "snapshot":
            self.snapshot_next.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command '{name}'"}

    def _publish_stats(self) -> dict:
        snap = self.stats.snapshot() | {"gate": dict(self.gate.counts) | {"timing": self.gate.timing()},
                                        "threshold": self.threshold,
                                        "model": self.bundle.meta["name"], "paused": self.paused.is_set()}
        self._tell(self.telemetry.stats, snap)
        return snap

    # --- run ---------------------------------------------------------------------------------------------

    def run(self, duration: float | None = None, max_parts: int | None = None, on_stats=print) -> dict:
        threads = [threading.Thread(target=self._capture, args=(max_parts,), name="capture", daemon=True),
                   threading.Thread(target=self._preprocess, name="preprocess", daemon=True),
                   threading.Thread(target=self._infer, name="infer", daemon=True)]
        for t in threads:
            t.start()
        t_end = time.monotonic() + duration if duration else None
        next_stats = time.monotonic() + self.cfg.stats_interval_s
        try:
            while any(t.is_alive() for t in threads):
                if self.stop_event.is_set() or (t_end and time.monotonic() >= t_end):
                    self.stop_event.set()
                    break
                threads[-1].join(timeout=0.05)
                if time.monotonic() >= next_stats:
                    next_stats += self.cfg.stats_interval_s
                    on_stats(Stats.line(self._publish_stats()))
                    if self.cfg.reload_watch and (mtime := self._bundle_mtime()) != self._watch:
                        self._watch = mtime
                        self.reload()
        except BaseException:
            self.gate.safe()
            self.light.set("fault")
            raise
        finally:
            self.stop_event.set()
            for t in threads:
                t.join(timeout=10)  # parts in flight finish: capture stops, the queues drain
            self.gate.close(drain=True)
            self.light.set("off")
            final = self._publish_stats()
            self.telemetry.close()
            self.gpio.cleanup()
        return final
