"""Devices on GPIO beside the reject gate (gate.py): the part-present sensor, the belt encoder and the
stack light."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from firmware_io.gpio.base import GPIOBackend
from firmware_io.gpio.config import EncoderConfig, InputConfig, StackLightConfig


class Encoder:
    """Counts rising edges; estimates the belt speed from the last `window` edges."""

    def __init__(self, gpio: GPIOBackend, cfg: EncoderConfig):
        self.cfg, self.count = cfg, 0
        self._times: deque[float] = deque(maxlen=cfg.window)
        self.listeners: list[Callable[[int], None]] = []
        gpio.setup_input(cfg.pin, cfg.pull_up, self._edge)

    def _edge(self, pin, level: int, t: float) -> None:
        if level != 1:
            return
        self.count += 1
        self._times.append(t)
        for listener in self.listeners:
            listener(self.count)

    def speed_mm_s(self) -> float:
        if len(self._times) < 2 or self._times[-1] == self._times[0]:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0]) / self.cfg.counts_per_mm


class PartSensor:
    """Part-present input: calls `on_part(stamp)` on each debounced rising edge."""

    def __init__(self, gpio: GPIOBackend, cfg: InputConfig, on_part: Callable[[float], None]):
        self.cfg, self.on_part = cfg, on_part
        self._last: float | None = None
        self.bounces = 0
        gpio.setup_input(cfg.pin, cfg.pull_up, self._edge, cfg.debounce_ms)

    def _edge(self, pin, level: int, t: float) -> None:
        active = 0 if self.cfg.pull_up else 1
        if level != active:
            return
        if self._last is not None and (t - self._last) * 1000 < self.cfg.debounce_ms:
            self.bounces += 1
            return
        self._last = t
        self.on_part(t)


class StackLight:
    """Green running, amber warning, red fault (with the horn)."""

    STATES = {"off": (), "running": ("green",), "warning": ("amber",), "fault": ("red", "horn")}

    def __init__(self, gpio: GPIOBackend, cfg: StackLightConfig):
        self.gpio = gpio
        self.pins = {k: v for k, v in cfg.model_dump().items() if v is not None}
        for pin in self.pins.values():
            gpio.setup_output(pin, 0)
        self.state = "off"

    def set(self, state: str) -> None:
        lit = self.STATES[state]
        for name, pin in self.pins.items():
            self.gpio.write(pin, 1 if name in lit else 0)
        self.state = state
