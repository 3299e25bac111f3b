"""The kernel's GPIO character device through libgpiod's Python bindings (`gpiod` 2.x): a Pi 5, a Pi 4, a
Jetson (JetPack 6) and other Linux boards alike. Outputs and inputs are line requests; an input's edges are
read by one thread from the kernel's event queue, each with the kernel's own timestamp (monotonic clock), so
a part sensor's time does not depend on when this process got to it.

Pins are line offsets on one chip: on a Pi the header's chip (found by its label), where offsets are BCM
numbers. Verified here only against a stand-in for the `gpiod` module; no board was driven in CI.
"""

from __future__ import annotations

import select
import sys
import threading
from pathlib import Path

from firmware_io.errors import FirmwareIOError
from firmware_io.gpio.base import EdgeCallback, RealClock

__all__ = ["GpiodGPIO", "header_chip"]

# the chips that carry a Raspberry Pi's 40-pin header, by label: Pi 5 (RP1), Pi 4, Pi 3 and earlier
PI_HEADER_LABELS = ("pinctrl-rp1", "pinctrl-bcm2711", "pinctrl-bcm2835")
CONSUMER = "qc-inspect"


def header_chip(gpiod, devices: Path = Path("/dev")) -> str:
    """The chip a Pi's header is on (its number changed between kernels on a Pi 5); elsewhere gpiochip0."""
    for path in sorted(devices.glob("gpiochip*")):
        try:
            if gpiod.is_gpiochip_device(str(path)):
                with gpiod.Chip(str(path)) as chip:
                    if chip.get_info().label in PI_HEADER_LABELS:
                        return str(path)
        except OSError:
            continue
    return str(devices / "gpiochip0")


class GpiodGPIO:
    name = "gpiod"

    def __init__(self, clock: RealClock | None = None, chip: str | None = None):
        try:
            import gpiod
            from gpiod.line import Bias, Direction, Edge, Value
        except ImportError as exc:
            raise FirmwareIOError("the gpiod GPIO backend needs libgpiod's Python bindings 2.x: pip install "
                                  "'qc-inspect[pi]' (or [jetson])") from exc
        self.gpiod, self.Bias, self.Direction, self.Edge, self.Value = gpiod, Bias, Direction, Edge, Value
        self.clock = clock or RealClock()
        self.chip = chip or header_chip(gpiod)
        self.requests: dict[int, object] = {}
        self.on_edge: dict[int, EdgeCallback] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _request(self, pin: int, what: str, settings) -> object:
        try:
            req = self.gpiod.request_lines(self.chip, consumer=CONSUMER, config={pin: settings})
        except (OSError, ValueError) as exc:
            raise FirmwareIOError(f"GPIO {pin} ({what}) on {self.chip}: {exc}; is the line used by another "
                                  "process, and is this user in the gpio group?") from None
        self.requests[pin] = req
        return req

    def setup_output(self, pin: int, initial: int) -> None:
        V = self.Value
        self._request(pin, "output", self.gpiod.LineSettings(direction=self.Direction.OUTPUT,
                                                             output_value=V.ACTIVE if initial else V.INACTIVE))

    def setup_input(self, pin: int, pull_up: bool, on_edge: EdgeCallback | None) -> None:
        edge = self.Edge.BOTH if on_edge else self.Edge.NONE
        bias = self.Bias.PULL_UP if pull_up else self.Bias.PULL_DOWN
        try:
            self._request(pin, "input", self.gpiod.LineSettings(direction=self.Direction.INPUT, bias=bias,
                                                                edge_detection=edge))
        except FirmwareIOError:  # a chip that cannot set a bias (a Jetson's): the wiring must pull the line
            self._request(pin, "input", self.gpiod.LineSettings(direction=self.Direction.INPUT, edge_detection=edge))
            print(f"[qc] GPIO {pin} on {self.chip}: the chip sets no pull-{'up' if pull_up else 'down'}; fit an "
                  "external resistor", file=sys.stderr, flush=True)
        if on_edge:
            self.on_edge[pin] = on_edge
            if self._thread is None:
                self._thread = threading.Thread(target=self._events, name="gpiod-events", daemon=True)
                self._thread.start()

    def _events(self) -> None:
        """Edges from the kernel, in order, with its timestamps; the devices debounce them."""
        rising = self.gpiod.EdgeEvent.Type.RISING_EDGE
        while not self._stop.is_set():
            watched = {self.requests[pin].fd: self.requests[pin] for pin in list(self.on_edge)}
            ready, _, _ = select.select(list(watched), [], [], 0.1)
            for fd in ready:
                for event in watched[fd].read_edge_events():
                    self.on_edge[event.line_offset](event.line_offset, int(event.event_type == rising),
                                                    event.timestamp_ns / 1e9)

    def write(self, pin: int, level: int) -> None:
        self.requests[pin].set_value(pin, self.Value.ACTIVE if level else self.Value.INACTIVE)

    def read(self, pin: int) -> int:
        return int(self.requests[pin].get_value(pin) == self.Value.ACTIVE)

    def cleanup(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for req in self.requests.values():
            req.release()  # the kernel returns the lines; outputs keep their last (safe) level
        self.requests.clear()
