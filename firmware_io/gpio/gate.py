"""The reject gate: it holds the parts in flight per lane in firing order and fires each one a set delay
(or encoder distance) after its capture stamp, on a dedicated timer that sleeps to absolute deadlines."""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

from firmware_io.errors import FirmwareIOError
from firmware_io.gpio.base import GPIOBackend
from firmware_io.gpio.config import GateConfig
from firmware_io.gpio.devices import Encoder

__all__ = ["RejectGate", "Scheduled"]


@dataclass
class Scheduled:
    """Where a reject will fire: `at` is a time (s) or an encoder count, `late` if already past."""

    lane: int
    at: float
    late: bool
    fired: bool = True


class RejectGate:
    def __init__(self, gpio: GPIOBackend, cfg: GateConfig, clock, encoder: Encoder | None = None):
        if cfg.distance_counts is not None and encoder is None:
            raise FirmwareIOError("gate.distance_counts needs an encoder")
        self.gpio, self.cfg, self.clock, self.encoder = gpio, cfg, clock, encoder
        self.on, self.off = (1, 0) if cfg.active_high else (0, 1)
        self.queues: list[deque[tuple[float, float]]] = [deque() for _ in cfg.pins]  # (firing point, pulse s)
        self.open_until: list[float | None] = [None] * len(cfg.pins)
        self.counts: Counter = Counter()
        self.errors_ms: deque[float] = deque(maxlen=10_000)  # fired minus scheduled, for stats and the demo
        self.closed = False
        self._wake = threading.Condition()
        for pin in cfg.pins:
            gpio.setup_output(pin, self.off)
        if encoder is not None:
            encoder.listeners.append(lambda count: self._poke())
        self._thread = clock.attach(self, self._wake)

    # --- scheduling (any thread) ---

    def schedule(self, stamp: float, lane: int = 0, delay_ms: float | None = None,
                 distance_counts: int | None = None, pulse_ms: float | None = None) -> Scheduled:
        """Reject the part captured at `stamp` (monotonic seconds, or the encoder count at capture); a recipe's
        delay, distance or pulse replaces the configured one for this part."""
        if not 0 <= lane < len(self.queues):
            raise FirmwareIOError(f"lane {lane} does not exist; the gate has {len(self.queues)} lane(s)")
        by_distance = self.cfg.distance_counts is not None
        at = stamp + ((distance_counts or self.cfg.distance_counts) if by_distance
                      else (delay_ms or self.cfg.delay_ms) / 1000)
        pulse = (pulse_ms or self.cfg.pulse_ms) / 1000
        with self._wake:
            now = self.encoder.count if by_distance else self.clock.now()
            late = at < now
            if late:
                self.counts["late"] += 1
                if self.cfg.late_policy == "skip":
                    self.counts["late_skipped"] += 1
                    return Scheduled(lane, at, late=True, fired=False)
                at = now
            if len(self.queues[lane]) >= self.cfg.max_in_flight:
                self.counts["overflow"] += 1
                raise FirmwareIOError(f"reject gate lane {lane} has {self.cfg.max_in_flight} parts in flight "
                                      "(gate.max_in_flight): the line outruns the gate")
            # workers may decide parts out of capture order: each keeps its own place on the belt
            bisect.insort(self.queues[lane], (at, pulse))
            self.counts["scheduled"] += 1
            self._wake.notify()
        return Scheduled(lane, at, late)

    def _poke(self) -> None:
        with self._wake:
            self._wake.notify()
        if self.clock.manual:
            self.service(self.clock.now())

    # --- the timer (one thread, or the manual clock) ---

    def next_deadline(self) -> float | None:
        ends = [t for t in self.open_until if t is not None]
        if self.cfg.distance_counts is None:
            ends += [q[0][0] for q in self.queues if q]
        return min(ends) if ends else None

    def service(self, now: float) -> None:
        by_time = self.cfg.distance_counts is None
        position = now if by_time else self.encoder.count
        gap = self.cfg.min_gap_ms / 1000
        for lane, pin in enumerate(self.cfg.pins):
            queue = self.queues[lane]
            while queue and queue[0][0] <= position:
                at, pulse = queue.popleft()
                self.counts["fired"] += 1
                if by_time:
                    self.errors_ms.append((now - at) * 1000)
                if self.open_until[lane] is None:
                    self.gpio.write(pin, self.on)
                else:
                    self.counts["merged"] += 1  # already open for the part before: stay open longer
                self.open_until[lane] = now + pulse
            end = self.open_until[lane]
            if end is not None and now >= end:
                if by_time and queue and queue[0][0] - now < gap:
                    self.open_until[lane] = queue[0][0]  # closing for less than min_gap would chatter the valve
                else:
                    self.gpio.write(pin, self.off)
                    self.open_until[lane] = None
                    self.counts["pulses"] += 1

    def timing(self) -> dict:
        """Fired-vs-scheduled error of recent pulses (time-based firing), in ms."""
        if not self.errors_ms:
            return {}
        e = sorted(self.errors_ms)
        return {"p50_ms": round(e[len(e) // 2], 3), "p99_ms": round(e[min(len(e) - 1, int(0.99 * len(e)))], 3),
                "max_ms": round(e[-1], 3), "n": len(e)}

    def in_flight(self) -> int:
        return sum(len(q) for q in self.queues)

    def safe(self) -> None:
        """Close every lane now and forget parts in flight (stop, fault)."""
        with self._wake:
            for lane, pin in enumerate(self.cfg.pins):
                self.counts["dropped_on_stop"] += len(self.queues[lane])
                self.queues[lane].clear()
                self.open_until[lane] = None
                self.gpio.write(pin, self.off)

    def close(self, drain: bool = True, timeout: float = 5.0) -> None:
        """Stop the timer; with drain, first let the parts in flight fire (real clock only)."""
        if drain and not self.clock.manual:
            deadline = time.monotonic() + timeout
            while (self.in_flight() or any(t is not None for t in self.open_until)) and time.monotonic() < deadline:
                time.sleep(0.005)
        self.safe()
        with self._wake:
            self.closed = True
            self._wake.notify()
