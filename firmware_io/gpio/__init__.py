"""GPIO backends (found by name) and the devices built on them."""

from __future__ import annotations

from firmware_io.gpio.base import GPIOBackend, ManualClock, RealClock
from firmware_io.gpio.config import GPIOConfig
from firmware_io.gpio.devices import Encoder, PartSensor, StackLight
from firmware_io.gpio.gate import RejectGate, Scheduled

__all__ = ["BACKENDS", "GPIOBackend", "GPIOConfig", "ManualClock", "RealClock", "Encoder", "PartSensor",
           "RejectGate", "Scheduled", "StackLight", "make_backend"]


def _sim(clock, chip):
    from firmware_io.gpio.sim import SimGPIO

    return SimGPIO(clock)


def _rpi(clock, chip):
    from firmware_io.gpio.rpi import RPiGPIO

    return RPiGPIO(clock)


def _gpiod(clock, chip):
    from firmware_io.gpio.libgpiod import GpiodGPIO

    return GpiodGPIO(clock, chip)


BACKENDS = {"sim": _sim, "rpi": _rpi, "gpiod": _gpiod}


def make_backend(name: str, clock=None, chip: str | None = None) -> GPIOBackend:
    """`chip`: the gpiod backend's GPIO chip (None: a Pi's header chip, else gpiochip0)."""
    return BACKENDS[name](clock or RealClock(), chip)
