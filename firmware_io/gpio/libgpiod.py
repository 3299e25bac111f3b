"""The kernel's GPIO character device through libgpiod's Python bindings (`gpiod` 2.x): a Pi 5, a Pi 4, a
Jetson (JetPack 6) and other Linux boards alike. Outputs and inputs are line requests; an input's edges are
read by one thread from the kernel's event queue, each with the kernel's own timestamp (monotonic clock), so
a part sensor's time does not depend on when this process got to it. Bias and debounce are the kernel's.

A pin is a BCM number on a Pi's header (its chip found by label), or CHIP:LINE: the chip by device
(gpiochip0, /dev/gpiochip0) or label (tegra234-gpio), the line by offset or by name (PQ.05). Verified here
only against a stand-in for the `gpiod` module; no board was driven in CI.
"""

from __future__ import annotations

import select
import sys
import threading
from datetime import timedelta
from pathlib import Path

from firmware_io.errors import FirmwareIOError
from firmware_io.gpio.base import EdgeCallback, Pin, RealClock

__all__ = ["GpiodGPIO", "find_chip"]

# the chips that carry a Raspberry Pi's 40-pin header, by label: Pi 5 (RP1), Pi 4, Pi 3 and earlier
PI_HEADER_LABELS = ("pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835")
CONSUMER = "qc-inspect"


def find_chip(gpiod, labels: tuple[str, ...], devices: Path = Path("/dev")) -> str | None:
    """The device of the first chip with one of these labels (chip numbers change between kernels)."""
    for path in sorted(devices.glob("gpiochip*")):
        try:
            if gpiod.is_gpiochip_device(str(path)):
                with gpiod.Chip(str(path)) as chip:
                    if chip.get_info().label in labels:
                        return str(path)
        except OSError:
            continue
    return None


class GpiodGPIO:
    name = "gpiod"

    def __init__(self, clock: RealClock | None = None, devices: Path = Path("/dev")):
        try:
            import gpiod
            from gpiod.line import Bias, Direction, Edge, Value
        except ImportError as exc:
            raise FirmwareIOError("the gpiod GPIO backend needs libgpiod's Python bindings 2.x: pip install "
                                  "'qc-inspect[pi]' (or [jetson])") from exc
        self.gpiod, self.Bias, self.Direction, self.Edge, self.Value = gpiod, Bias, Direction, Edge, Value
        self.clock = clock or RealClock()
        self.devices = devices
        self.lines: dict[Pin, tuple[object, int]] = {}  # pin -> (its line request, its offset)
        self.on_edge: dict[int, tuple] = {}  # request's fd -> (request, pin, callback, debounce s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def locate(self, pin: Pin) -> tuple[str, int | str]:
        """(chip device, line offset or name) of a pin."""
        if isinstance(pin, int):
            chip = find_chip(self.gpiod, PI_HEADER_LABELS, self.devices)
            if chip is None:
                raise FirmwareIOError(f"GPIO {pin}: no Raspberry Pi header chip ({', '.join(PI_HEADER_LABELS)}) "
                                      "on this board; name the pin as CHIP:LINE (see gpioinfo)")
            return chip, pin
        chip, line = pin.split(":")
        if chip.startswith("gpiochip"):
            chip = str(self.devices / chip)
        elif not chip.startswith("/"):
            found = find_chip(self.gpiod, (chip,), self.devices)
            if found is None:
                raise FirmwareIOError(f"GPIO {pin}: no GPIO chip labelled {chip!r} on this board (see gpiodetect)")
            chip = found
        return chip, int(line) if line.isdigit() else line

    def _request(self, pin: Pin, what: str, settings) -> tuple[object, int]:
        chip, line = self.locate(pin)
        try:
            if isinstance(line, str):
                with self.gpiod.Chip(chip) as c:
                    line = c.line_offset_from_id(line)
            req = self.gpiod.request_lines(chip, consumer=CONSUMER, config={line: settings})
        except (OSError, ValueError) as exc:
            raise FirmwareIOError(f"GPIO {pin} ({what}) on {chip}: {exc}; is the line used by another "
                                  "process, and is this user in the gpio group?") from None
        self.lines[pin] = req, line
        return req, line

    def setup_output(self, pin: Pin, initial: int) -> None:
        V = self.Value
        self._request(pin, "output", self.gpiod.LineSettings(direction=self.Direction.OUTPUT,
                                                             output_value=V.ACTIVE if initial else V.INACTIVE))

    def setup_input(self, pin: Pin, pull_up: bool, on_edge: EdgeCallback | None, debounce_ms: float = 0.0) -> None:
        settings = dict(direction=self.Direction.INPUT, edge_detection=self.Edge.BOTH if on_edge else self.Edge.NONE,
                        debounce_period=timedelta(milliseconds=debounce_ms))
        try:
            req, _ = self._request(pin, "input", self.gpiod.LineSettings(
                bias=self.Bias.PULL_UP if pull_up else self.Bias.PULL_DOWN, **settings))
        except FirmwareIOError:  # a chip that cannot set a bias (a Jetson's): the wiring must pull the line
            req, _ = self._request(pin, "input", self.gpiod.LineSettings(**settings))
            print(f"[qc] GPIO {pin}: its chip sets no pull-{'up' if pull_up else 'down'}; fit an external resistor",
                  file=sys.stderr, flush=True)
        if on_edge:
            self.on_edge[req.fd] = req, pin, on_edge, debounce_ms / 1000
            if self._thread is None:
                self._thread = threading.Thread(target=self._events, name="gpiod-events", daemon=True)
                self._thread.start()

    def _events(self) -> None:
        """Edges from the kernel, in order, with its timestamps. The kernel reports a debounced edge once the
        line has been steady for the debounce period, so that period is taken off its time."""
        rising = self.gpiod.EdgeEvent.Type.RISING_EDGE
        while not self._stop.is_set():
            ready, _, _ = select.select(list(self.on_edge), [], [], 0.1)
            for fd in ready:
                req, pin, callback, debounce_s = self.on_edge[fd]
                for event in req.read_edge_events():
                    callback(pin, int(event.event_type == rising), event.timestamp_ns / 1e9 - debounce_s)

    def write(self, pin: Pin, level: int) -> None:
        req, line = self.lines[pin]
        req.set_value(line, self.Value.ACTIVE if level else self.Value.INACTIVE)

    def read(self, pin: Pin) -> int:
        req, line = self.lines[pin]
        return int(req.get_value(line) == self.Value.ACTIVE)

    def cleanup(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for req, _ in self.lines.values():
            req.release()  # the kernel returns the lines; outputs keep their last (safe) level
        self.lines.clear()
