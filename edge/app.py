"""The one place that builds a running inspection from a validated config: the frame source, the
classifier (inside the runtime, which reloads it), the GPIO devices, telemetry (MQTT when enabled) and the
reject store. `qc run`, `qc demo` and `qc bench` all call `build_runtime`; tests pass stand-ins for the
parts a machine here cannot have (a clock they move by hand, a source of their own)."""

from __future__ import annotations

from pathlib import Path

from edge.config import EdgeConfig
from edge.pipeline import LineIO, Runtime
from edge.sources import make_source
from edge.store import RejectStore
from edge.telemetry import JsonlTee, MemoryTelemetry, Telemetry
from firmware_io.gpio import Encoder, PartSensor, RealClock, RejectGate, StackLight, make_backend

__all__ = ["build_runtime"]


def build_runtime(cfg: EdgeConfig, *, events: Path | None = None, telemetry: Telemetry | None = None,
                  gpio=None, clock=None, source=None) -> Runtime:
    """A runtime wired from `cfg`. `events` also appends every inspection to a JSONL file; `telemetry`,
    `gpio`, `clock` and `source` replace what the config would build."""
    mqtt = None
    if telemetry is None:
        if cfg.mqtt.enabled:
            from firmware_io.mqtt.client import MQTTTelemetry

            telemetry = mqtt = MQTTTelemetry(cfg.mqtt, cfg.line, cfg.station)
        else:
            telemetry = MemoryTelemetry()
    if events:
        telemetry = JsonlTee(telemetry, events)
    clock = clock or RealClock()
    gpio = gpio or make_backend(cfg.gpio.backend, clock, cfg.gpio.chip)
    encoder = Encoder(gpio, cfg.gpio.encoder) if cfg.gpio.encoder else None
    line = LineIO(gpio, clock, RejectGate(gpio, cfg.gpio.gate, clock, encoder), StackLight(gpio, cfg.gpio.stack_light),
                  encoder)
    store = RejectStore(cfg.store.dir, cfg.store.max_files, cfg.store.sample_passes) if cfg.store.dir else None
    runtime: Runtime | None = None  # the source's alarms go to the runtime built just below
    source = source if source is not None else make_source(cfg.source, lambda kind, msg: runtime.alarm(kind, msg),
                                                            cfg.trigger.mode)
    runtime = Runtime(cfg, telemetry, line, source, store)
    if cfg.trigger.mode == "part_sensor":
        PartSensor(gpio, cfg.gpio.part_sensor, runtime.on_part)
    elif cfg.trigger.mode == "encoder":
        encoder.listeners.append(runtime.on_count)
    if mqtt and cfg.mqtt.commands:
        mqtt.on_command(runtime.command)
    return runtime
