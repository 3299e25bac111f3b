"""The RPi.GPIO API: RPi.GPIO on a Pi up to 4, rpi-lgpio on a Pi 5, Jetson.GPIO on a Jetson.

BCM numbering, edge callbacks for inputs, cleanup on exit. Verified here only through the shared
device logic on the simulated backend; no real pin was driven in CI.
"""

from __future__ import annotations

import time

from firmware_io.errors import FirmwareIOError
from firmware_io.gpio.base import EdgeCallback, RealClock


class RPiGPIO:
    name = "rpi"

    def __init__(self, clock: RealClock | None = None):
        try:
            import RPi.GPIO as GPIO  # noqa: N814
        except (ImportError, RuntimeError) as exc:
            raise FirmwareIOError("the rpi GPIO backend needs the RPi.GPIO API: pip install 'qc-inspect[pi]' "
                                  "(RPi.GPIO on a Pi up to 4, rpi-lgpio on a Pi 5, Jetson.GPIO on a Jetson)") from exc
        self.gpio = GPIO
        self.clock = clock or RealClock()
        GPIO.setwarnings(False)
        GPIO.setmode(GPIO.BCM)

    def setup_output(self, pin: int, initial: int) -> None:
        self.gpio.setup(pin, self.gpio.OUT, initial=self.gpio.HIGH if initial else self.gpio.LOW)

    def setup_input(self, pin: int, pull_up: bool, on_edge: EdgeCallback | None) -> None:
        g = self.gpio
        g.setup(pin, g.IN, pull_up_down=g.PUD_UP if pull_up else g.PUD_DOWN)
        if on_edge:
            g.add_event_detect(pin, g.BOTH, callback=lambda ch: on_edge(ch, g.input(ch), time.monotonic()))

    def write(self, pin: int, level: int) -> None:
        self.gpio.output(pin, self.gpio.HIGH if level else self.gpio.LOW)

    def read(self, pin: int) -> int:
        return int(self.gpio.input(pin))

    def cleanup(self) -> None:
        self.gpio.cleanup()
