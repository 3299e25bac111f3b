"""GPIO backends (found by name) and the devices built on them."""

from __future__ import annotations

from firmware_io.gpio.base import GPIOBackend, ManualClock, RealClock
from firmware_io.gpio.config import GPIOConfig
from firmware_io.gpio.devices import Encoder, PartSensor, StackLight
from firmware_io.gpio.gate import RejectGate, Scheduled

__all__ = ["BACKENDS", "GPIOBackend", "GPIOConfig", "ManualClock", "RealClock", "Encoder", "PartSensor",
           "RejectGate", "Scheduled", "StackLight", "make_backend"]


def _sim(clock):
    from firmware_io.gpio.sim import SimGPIO

    return SimGPIO(clock)


def _rpi(clock):
    from firmware_io.gpio.rpi import RPiGPIO

    return RPiGPIO(clock)


BACKENDS = {"sim": _sim, "rpi": _rpi}


def make_backend(name: str, clock=None) -> GPIOBackend:
    return BACKENDS[name](clock or RealClock())
