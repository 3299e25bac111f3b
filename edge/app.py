"""The one place that builds a running inspection from a validated config: the frame source, the
classifier (inside the runtime, which reloads it), the GPIO devices, telemetry (MQTT when enabled) and the
reject store. `qc run`, `qc demo` and `qc bench` all call `build_runtime`; tests pass stand-ins for the
parts a machine here cannot have (a clock they move by hand, a source of their own)."""

from __future__ import annotations

import sys
from pathlib import Path

from edge.config import EdgeConfig
from edge.errors import EdgeError
from edge.pipeline import LineIO, Runtime
from edge.sources import LiveSource, make_source
from edge.store import RejectStore
from edge.telemetry import JsonlTee, MemoryTelemetry, Telemetry
from firmware_io.errors import QCError
from firmware_io.gpio import Encoder, PartSensor, RealClock, RejectGate, StackLight, make_backend
from firmware_io.gpio.plc import PLCHandshake

__all__ = ["build_runtime", "plc_servers", "start_servers"]

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


def plc_servers(cfg: EdgeConfig) -> list:
    """How to make each PLC server the config enables, from a LineView; a missing plc extra or an unreadable
    OPC UA users file is an EdgeError that names it."""
    try:
        from edge.plc.modbus import ModbusServer
        from edge.plc.opcua import OpcUaServer, load_opcua_users
    except ImportError as exc:
        raise EdgeError(f"opcua/modbus need the plc extra ({exc}): pip install 'qc-inspect[plc]'") from None
    makers = []
    if cfg.opcua.enabled:
        users = load_opcua_users(cfg.opcua.users_file)
        makers.append(lambda view: OpcUaServer(view, cfg.opcua, users))
    if cfg.modbus.enabled:
        makers.append(lambda view: ModbusServer(view, cfg.modbus))
    return makers


def start_servers(runtime: Runtime, cfg: EdgeConfig) -> list:
    """What serves beside the runtime, started: the operator's station (`web:`), OPC UA (`opcua:`) and Modbus
    TCP (`modbus:`), each in a thread of its own and each with `stop()`. A port in use, an open bind address
    without operator tokens, or OPC UA without users is a start-up error, and what had started is stopped."""
    started = []
    try:
        if cfg.web.enabled:
            from edge.station import Station, load_operators

            started.append(Station(runtime, cfg.web, load_operators(cfg.web.operators_file)).start())
            print(f"[qc] station on {started[-1].url}", file=sys.stderr, flush=True)
        if cfg.opcua.enabled or cfg.modbus.enabled:
            from edge.plc import LineView

            view = LineView(runtime)
            for make in plc_servers(cfg):
                started.append(make(view).start())
                print(f"[qc] {started[-1].name} on {started[-1].url}", file=sys.stderr, flush=True)
    except BaseException:
        for server in started:
            server.stop()
        raise
    return started
