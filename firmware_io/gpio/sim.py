"""A simulated GPIO backend that records every output change with its time (after gpiozero's MockPin).

Tests and the demo drive inputs with `drive(pin, level)`; callbacks fire as on real hardware.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from firmware_io.gpio.base import EdgeCallback, ManualClock, Pin, RealClock


@dataclass(frozen=True)
class Change:
    t: float
    pin: Pin
    level: int


class SimGPIO:
    name = "sim"

    def __init__(self, clock: RealClock | ManualClock | None = None):
        self.clock = clock or RealClock()
        self.levels: dict[int, int] = {}
        self.outputs: set[int] = set()
        self.callbacks: dict[int, EdgeCallback | None] = {}
        self.changes: list[Change] = []
        self._lock = threading.Lock()

    def setup_output(self, pin: Pin, initial: int) -> None:
        self.outputs.add(pin)
        self.write(pin, initial)

    def setup_input(self, pin: Pin, pull_up: bool, on_edge: EdgeCallback | None, debounce_ms: float = 0.0) -> None:
        self.levels[pin] = 1 if pull_up else 0
        self.callbacks[pin] = on_edge

    def write(self, pin: Pin, level: int) -> None:
        if pin not in self.outputs:
            raise RuntimeError(f"GPIO {pin} is not set up as an output")
        with self._lock:
            if self.levels.get(pin) != level:
                self.changes.append(Change(self.clock.now(), pin, level))
            self.levels[pin] = level

    def read(self, pin: Pin) -> int:
        return self.levels[pin]

    def drive(self, pin: Pin, level: int) -> None:
        """Set an input as the outside world would; runs its edge callback on a change."""
        if pin not in self.callbacks:
            raise RuntimeError(f"GPIO {pin} is not set up as an input")
        if self.levels.get(pin) == level:
            return
        self.levels[pin] = level
        callback = self.callbacks[pin]
        if callback:
            callback(pin, level, self.clock.now())

    def pulse_in(self, pin: Pin, width: float = 0.0005) -> None:
        """One rising then falling edge on an input (an encoder tick, a part passing)."""
        self.drive(pin, 1)
        if isinstance(self.clock, ManualClock):
            self.clock.advance(width)
        self.drive(pin, 0)

    def pulses(self, pin: Pin) -> list[tuple[float, float]]:
        """(start, end) of every high pulse recorded on an output."""
        out, start = [], None
        for c in self.changes:
            if c.pin != pin:
                continue
            if c.level == 1:
                start = c.t
            elif start is not None:
                out.append((start, c.t))
                start = None
        return out

    def cleanup(self) -> None:
        self.callbacks.clear()
