"""The GPIO interface every backend implements, and the clocks the devices run on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

Pin = int | str  # a BCM number, or CHIP:LINE (gpiod)
EdgeCallback = Callable[[Pin, int, float], None]  # (pin, level, monotonic time)


class GPIOBackend(Protocol):
    """Levels are 0/1. `debounce_ms`: a backend whose kernel debounces does so; the devices debounce too."""

    def setup_output(self, pin: Pin, initial: int) -> None: ...
    def setup_input(self, pin: Pin, pull_up: bool, on_edge: EdgeCallback | None, debounce_ms: float = 0.0) -> None: ...
    def write(self, pin: Pin, level: int) -> None: ...
    def read(self, pin: Pin) -> int: ...
    def cleanup(self) -> None: ...


class Serviced(Protocol):
    def next_deadline(self) -> float | None: ...
    def service(self, now: float) -> None: ...


class RealClock:
    """The monotonic clock; each serviced device gets a thread that sleeps to absolute deadlines (no drift)."""

    manual = False

    def now(self) -> float:
        return time.monotonic()

    def attach(self, device: Serviced, wake: threading.Condition) -> threading.Thread:
        def loop():
            with wake:
                while not getattr(device, "closed", False):
                    device.service(time.monotonic())
                    deadline = device.next_deadline()
                    wake.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

        thread = threading.Thread(target=loop, name=f"{type(device).__name__}-timer", daemon=True)
        thread.start()
        return thread


class ManualClock:
    """A clock tests move by hand: `advance` steps to every deadline on the way, so times are exact."""

    manual = True

    def __init__(self, start: float = 0.0):
        self.t = start
        self.devices: list[Serviced] = []

    def now(self) -> float:
        return self.t

    def attach(self, device: Serviced, wake: threading.Condition) -> None:
        self.devices.append(device)

    def advance(self, seconds: float) -> None:
        end = self.t + seconds
        while True:
            deadlines = [d for d in (dev.next_deadline() for dev in self.devices) if d is not None]
            if not deadlines or min(deadlines) > end:
                break
            self.t = max(self.t, min(deadlines))
            for dev in self.devices:
                dev.service(self.t)
        self.t = end
        for dev in self.devices:
            dev.service(self.t)
