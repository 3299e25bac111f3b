"""The one place that builds a running inspection from a validated config: the frame source, the
classifier (inside the runtime, which reloads it), the GPIO devices, telemetry (MQTT when enabled) and the
reject store. `qc run`, `qc demo` and `qc bench` all call `build_runtime`; tests pass stand-ins for the
parts a machine here cannot have (a clock they move by hand, a source of their own)."""

from __future__ import annotations

import sys
from pathlib import Path

from edge.config import EdgeConfig
from edge.pipeline import LineIO, Runtime
from edge.sources import LiveSource, make_source
from edge.store import RejectStore
from edge.telemetry import JsonlTee, MemoryTelemetry, Telemetry
from firmware_io.errors import QCError
from firmware_io.gpio import Encoder, PartSensor, RealClock, RejectGate, StackLight, make_backend
from firmware_io.gpio.plc import PLCHandshake

__all__ = ["build_runtime", "start_station"]

STARTUP_ALARM_WAIT_S = 5.0  # how long a failed start waits for the broker to take its alarm


def build_runtime(cfg: EdgeConfig, *, events: Path | None = None, telemetry: Telemetry | None = None,
                  gpio=None, clock=None, source=None) -> Runtime:
    """A runtime wired from `cfg`, its camera open. `events` also appends every inspection to a JSONL file;
    `telemetry`, `gpio`, `clock` and `source` replace what the config would build.

    A GPIO line, camera or model that cannot be opened is a start-up error (QCError: `qc run` exits 2, which
    the unit does not restart on), alarmed as `startup_failed` where telemetry reaches: over MQTT when the
    broker answers within STARTUP_ALARM_WAIT_S, else it stays in the spool for the next start."""
    mqtt = None
    if telemetry is None:
        if cfg.mqtt.enabled:
            from firmware_io.mqtt.client import MQTTTelemetry

            telemetry = mqtt = MQTTTelemetry(cfg.mqtt, cfg.line, cfg.station)
        else:
            telemetry = MemoryTelemetry()
    if events:
        telemetry = JsonlTee(telemetry, events)
    try:
        runtime = _wire(cfg, telemetry, gpio, clock or RealClock(), source)
    except QCError as exc:
        telemetry.alarm("startup_failed", str(exc))
        if mqtt is not None:
            mqtt.connected.wait(STARTUP_ALARM_WAIT_S)
        telemetry.close()
        raise
    if mqtt and cfg.mqtt.commands:
        mqtt.on_command(runtime.command)
    return runtime


def _wire(cfg: EdgeConfig, telemetry: Telemetry, gpio, clock, source) -> Runtime:
    gpio = gpio or make_backend(cfg.gpio.backend, clock)
    encoder = Encoder(gpio, cfg.gpio.encoder) if cfg.gpio.encoder else None
    line = LineIO(gpio, clock, RejectGate(gpio, cfg.gpio.gate, clock, encoder), StackLight(gpio, cfg.gpio.stack_light),
                  encoder)
    store = RejectStore(cfg.store.dir, cfg.store.max_files, cfg.store.sample_passes) if cfg.store.dir else None
    runtime: Runtime | None = None  # the source's alarms go to the runtime built just below
    source = source if source is not None else make_source(cfg.source, lambda kind, msg: runtime.alarm(kind, msg),
                                                            cfg.trigger.mode)
    runtime = Runtime(cfg, telemetry, line, source, store)
    if isinstance(source, LiveSource):
        source.open(cfg.source.open_timeout_s)
    if cfg.trigger.mode == "part_sensor":
        PartSensor(gpio, cfg.gpio.part_sensor, runtime.on_part)
    elif cfg.trigger.mode == "encoder":
        encoder.listeners.append(runtime.on_count)
    elif cfg.trigger.mode == "plc":
        runtime.plc = PLCHandshake(gpio, cfg.gpio.plc, clock, runtime.on_part, runtime.recipe_by_index,
                                   runtime.alarm)
    return runtime


def start_station(runtime: Runtime, cfg: EdgeConfig):
    """The operator's station beside the runtime (`web:`), or None when it is off. A port in use, or an open
    bind address without operator tokens, is a start-up error."""
    if not cfg.web.enabled:
        return None
    from edge.station import Station, load_operators

    station = Station(runtime, cfg.web, load_operators(cfg.web.operators_file)).start()
    print(f"[qc] station on {station.url}", file=sys.stderr, flush=True)
    return station
