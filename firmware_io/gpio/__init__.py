"""GPIO backends (found by name) and the devices built on them."""

from __future__ import annotations

import platform
import sys

from firmware_io.gpio.base import GPIOBackend, ManualClock, RealClock
from firmware_io.gpio.config import GPIOConfig
from firmware_io.gpio.devices import Encoder, PartSensor, StackLight
from firmware_io.gpio.gate import RejectGate, Scheduled

__all__ = ["BACKENDS", "GPIOBackend", "GPIOConfig", "ManualClock", "RealClock", "Encoder", "PartSensor",
           "RejectGate", "Scheduled", "StackLight", "make_backend", "resolve"]


def _sim(clock):
    from firmware_io.gpio.sim import SimGPIO

    return SimGPIO(clock)


def _rpi(clock):
    from firmware_io.gpio.rpi import RPiGPIO

    return RPiGPIO(clock)


def _gpiod(clock):
    from firmware_io.gpio.libgpiod import GpiodGPIO

    return GpiodGPIO(clock)


BACKENDS = {"sim": _sim, "rpi": _rpi, "gpiod": _gpiod}


def resolve(name: str) -> str:
    """`auto`: the kernel's GPIO device on ARM Linux (a Pi, a Jetson), the simulated pins elsewhere."""
    if name != "auto":
        return name
    return "gpiod" if sys.platform == "linux" and platform.machine() in ("aarch64", "armv8l", "armv7l", "armv6l") else "sim"


def make_backend(name: str, clock=None) -> GPIOBackend:
    return BACKENDS[resolve(name)](clock or RealClock())
