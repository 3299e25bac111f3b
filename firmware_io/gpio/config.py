"""GPIO settings as pydantic models: a typo, a pin used twice, a pin out of range or a pulse that does
not fit between parts is an error that names the setting."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from firmware_io.settings import Strict

BCM_PINS = range(0, 28)
_CHIP_LINE = re.compile(r"[^:\s]+:[^:\s]+")


def _pin(value: int | str) -> int | str:
    if isinstance(value, str) and not _CHIP_LINE.fullmatch(value):
        raise ValueError(f"{value!r} is not CHIP:LINE (e.g. gpiochip0:17, tegra234-gpio:PQ.05) or a BCM number")
    if isinstance(value, int) and value not in BCM_PINS:
        raise ValueError(f"{value} is not a BCM GPIO pin (0-27); name another chip's line as CHIP:LINE")
    return value


# a BCM number on a Pi's header, or CHIP:LINE: the chip by device (gpiochip0, /dev/gpiochip0) or label, the line
# by offset or name (gpiod backend)
Pin = Annotated[int | str, AfterValidator(_pin)]


class GateConfig(Strict):
    pins: list[Pin] = Field([17], min_length=1, description="one output pin per lane")
    active_high: bool = Field(True, description="the level that opens the gate")
    delay_ms: float | None = Field(300.0, gt=0, description="constant-speed line: capture to firing delay")
    distance_counts: int | None = Field(None, gt=0, description="variable-speed line: encoder counts to firing")
    pulse_ms: float = Field(40.0, gt=0, description="how long the gate stays open")
    min_gap_ms: float = Field(10.0, ge=0, description="minimum closed time between pulses; closer ones merge")
    part_pitch_ms: float | None = Field(None, gt=0, description="shortest time between parts on the line")
    late_policy: Literal["fire", "skip"] = Field("fire", description="a decision past its firing time: "
                                                 "fire at once, or not at all (always counted as late)")
    max_in_flight: int = Field(1024, ge=1, description="parts waiting per lane before new ones are refused")

    @model_validator(mode="after")
    def _check(self):
        if (self.delay_ms is None) == (self.distance_counts is None):
            raise ValueError("set exactly one of gate.delay_ms (time) or gate.distance_counts (encoder)")
        if self.part_pitch_ms is not None and self.pulse_ms + self.min_gap_ms > self.part_pitch_ms:
            raise ValueError(f"gate.pulse_ms {self.pulse_ms} + gate.min_gap_ms {self.min_gap_ms} is longer than "
                             f"gate.part_pitch_ms {self.part_pitch_ms}: two rejected parts in a row would merge")
        return self


class InputConfig(Strict):
    pin: Pin = Field(description="input pin")
    pull_up: bool = Field(False, description="internal pull-up (sensor pulls low) instead of pull-down")
    debounce_ms: float = Field(5.0, ge=0, description="edges closer than this to the last accepted one are ignored")


class EncoderConfig(Strict):
    pin: Pin = Field(description="input pin of the encoder's A channel")
    pull_up: bool = Field(False)
    counts_per_mm: float = Field(1.0, gt=0, description="to report the belt speed in mm/s")
    window: int = Field(32, ge=2, description="edges used for the speed estimate")


class StackLightConfig(Strict):
    green: Pin | None = Field(None, description="running")
    amber: Pin | None = Field(None, description="warning")
    red: Pin | None = Field(None, description="fault")
    horn: Pin | None = Field(None, description="sounds with red")


class PLCConfig(Strict):
    """The PLC handshake's lines (firmware_io/gpio/plc.py has the timing diagram)."""

    trigger: Pin = Field(description="input: a rising edge asks for a part's inspection")
    result_ack: Pin = Field(description="input: the PLC has read ok/ng")
    recipe_bits: list[Pin] = Field(default_factory=list, max_length=8, description="inputs: a recipe's index, bit 0 "
                                   "first")
    recipe_strobe: Pin | None = Field(None, description="input: a rising edge reads recipe_bits and changes over")
    ready: Pin = Field(description="output: a trigger is welcome")
    busy: Pin = Field(description="output: inspecting, or changing over")
    result_ready: Pin = Field(description="output: ok/ng hold this part's result")
    ok: Pin = Field(description="output: the part passed")
    ng: Pin = Field(description="output: the part is to be rejected")
    error: Pin = Field(description="output: fail-safe result, refused trigger or recipe, or a missing ack")
    active_high: bool = Field(True, description="outputs: the asserted level")
    pull_up: bool = Field(False, description="inputs: pulled up, asserted low (an open-collector PLC output)")
    debounce_ms: float = Field(1.0, ge=0, description="inputs")
    ack_timeout_ms: float = Field(1000.0, gt=0, description="a result not acknowledged this long is withdrawn")

    @model_validator(mode="after")
    def _check(self):
        if self.recipe_bits and self.recipe_strobe is None:
            raise ValueError("plc.recipe_bits need plc.recipe_strobe, the edge that reads them")
        return self


class GPIOConfig(Strict):
    backend: Literal["auto", "sim", "gpiod", "rpi"] = Field(
        "auto", description="gpiod (the kernel's GPIO device: a Pi 5, a Pi 4, a Jetson, any Linux board); rpi (the "
        "RPi.GPIO API); sim (records every edge); auto: gpiod on ARM Linux, else sim")
    gate: GateConfig = Field(default_factory=GateConfig)
    part_sensor: InputConfig | None = Field(None, description="part-present input, for triggered capture")
    encoder: EncoderConfig | None = Field(None, description="belt encoder, for distance-based firing")
    stack_light: StackLightConfig = Field(default_factory=StackLightConfig)
    plc: PLCConfig | None = Field(None, description="the PLC handshake's lines, for trigger.mode plc")

    @model_validator(mode="after")
    def _check_pins(self):
        named = [(f"gate.pins[{i}]", p) for i, p in enumerate(self.gate.pins)]
        for key in ("part_sensor", "encoder"):
            if getattr(self, key) is not None:
                named.append((f"{key}.pin", getattr(self, key).pin))
        named += [(f"stack_light.{k}", v) for k, v in self.stack_light.model_dump().items() if v is not None]
        if self.plc is not None:
            for key in ("trigger", "result_ack", "recipe_strobe", "ready", "busy", "result_ready", "ok", "ng", "error"):
                if (pin := getattr(self.plc, key)) is not None:
                    named.append((f"plc.{key}", pin))
            named += [(f"plc.recipe_bits[{i}]", p) for i, p in enumerate(self.plc.recipe_bits)]
        seen: dict[int | str, str] = {}
        for name, pin in named:
            if self.backend == "rpi" and isinstance(pin, str):
                raise ValueError(f"{name} = {pin!r}: the rpi backend takes BCM numbers; CHIP:LINE needs gpiod")
            key = pin.removeprefix("/dev/") if isinstance(pin, str) else pin
            if key in seen:
                raise ValueError(f"{name} and {seen[key]} both use GPIO {pin}")
            seen[key] = name
        if self.gate.distance_counts is not None and self.encoder is None:
            raise ValueError("gate.distance_counts needs an encoder: set encoder.pin")
        return self
