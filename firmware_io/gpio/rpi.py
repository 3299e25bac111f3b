"""The RPi.GPIO API: RPi.GPIO on a Pi up to 4, rpi-lgpio on a Pi 5, Jetson.GPIO on a Jetson.

BCM numbering, edge callbacks for inputs, cleanup on exit. Verified here only through the shared
device logic on the simulated backend; no real pin was driven in CI.
"""

from __future__ import annotations

import time
from pathlib import Path

from firmware_io.errors import FirmwareIOError
from firmware_io.gpio.base import EdgeCallback, RealClock

_FIX = ("on a Pi 5, RPi.GPIO cannot reach the GPIO (\"Cannot determine SOC peripheral base address\"): "
        "install rpi-lgpio in its place (pip uninstall RPi.GPIO; pip install rpi-lgpio); elsewhere, run as a "
        "user in the gpio group")


def _board() -> str:
    try:
        return Path("/proc/device-tree/model").read_text().strip("\x00\n ") or "this board"
    except OSError:
        return "this board"


class RPiGPIO:
    name = "rpi"

    def __init__(self, clock: RealClock | None = None):
        try:
            import RPi.GPIO as GPIO  # noqa: N814
        except (ImportError, RuntimeError) as exc:
            raise FirmwareIOError("the rpi GPIO backend needs the RPi.GPIO API: pip install RPi.GPIO (a Pi up to 4), "
                                  "rpi-lgpio (a Pi 5) or Jetson.GPIO (a Jetson); or use gpio.backend gpiod") from exc
        self.gpio = GPIO
        self.clock = clock or RealClock()
        GPIO.setwarnings(False)
        GPIO.setmode(GPIO.BCM)

    def _setup(self, pin: int, what: str, *steps) -> None:
        """Set a pin up; a library that cannot is a start-up error naming it, the board and the fix (the
        service then exits 2, which its unit does not restart on), never a crash loop."""
        try:
            for step in steps:
                step()
        except Exception as exc:
            raise FirmwareIOError(f"GPIO {pin} ({what}): {type(exc).__name__}: {exc} from the RPi.GPIO API on "
                                  f"{_board()}; {_FIX}") from None

    def setup_output(self, pin: int, initial: int) -> None:
        g = self.gpio
        self._setup(pin, "output", lambda: g.setup(pin, g.OUT, initial=g.HIGH if initial else g.LOW))

    def setup_input(self, pin: int, pull_up: bool, on_edge: EdgeCallback | None, debounce_ms: float = 0.0) -> None:
        g = self.gpio
        steps = [lambda: g.setup(pin, g.IN, pull_up_down=g.PUD_UP if pull_up else g.PUD_DOWN)]
        if on_edge:
            steps.append(lambda: g.add_event_detect(pin, g.BOTH,
                                                    callback=lambda ch: on_edge(ch, g.input(ch), time.monotonic())))
        self._setup(pin, "input", *steps)

    def write(self, pin: int, level: int) -> None:
        self.gpio.output(pin, self.gpio.HIGH if level else self.gpio.LOW)

    def read(self, pin: int) -> int:
        return int(self.gpio.input(pin))

    def cleanup(self) -> None:
        self.gpio.cleanup()
