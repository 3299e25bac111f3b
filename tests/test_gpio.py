"""Reject gate, inputs and stack light on the simulated backend with a manual clock: exact timing."""

import json
import time

import pytest
from pydantic import ValidationError

from edge.errors import QCError
from firmware_io.gpio import Encoder, GPIOConfig, ManualClock, PartSensor, RealClock, RejectGate, StackLight
from firmware_io.gpio.config import GateConfig
from firmware_io.gpio.sim import SimGPIO
from firmware_io.mqtt.broker import LocalBroker

from .test_mqtt import Listener, wait_for


@pytest.fixture
def clock():
    return ManualClock(start=100.0)


@pytest.fixture
def sim(clock):
    return SimGPIO(clock)


def gate(sim, clock, **kw):
    return RejectGate(sim, GateConfig(**({"pins": [17], "delay_ms": 300, "pulse_ms": 40} | kw)), clock)


def test_fires_delay_after_capture_for_pulse_ms(sim, clock):
    g = gate(sim, clock)
    assert sim.levels[17] == 0  # safe at start-up
    g.schedule(stamp=100.0)
    clock.advance(1.0)
    assert sim.pulses(17) == [(pytest.approx(100.3), pytest.approx(100.34))]
    assert g.counts["fired"] == 1 and g.counts["pulses"] == 1


def test_many_parts_in_flight_fire_in_capture_order_at_their_own_times(sim, clock):
    g = gate(sim, clock, delay_ms=2000, pulse_ms=5, min_gap_ms=2)
    stamps = [100.0 + 0.01 * i for i in range(300)]  # 300 parts captured 10 ms apart, all in flight
    for i in range(0, 300, 2):  # decided by two workers: each pair out of order
        g.schedule(stamps[i + 1])
        g.schedule(stamps[i])
    assert g.in_flight() == 300
    clock.advance(5.0)
    starts = [a for a, _ in sim.pulses(17)]
    assert starts == pytest.approx([s + 2.0 for s in stamps])
    assert g.counts["fired"] == 300 and g.counts["merged"] == 0


def test_lanes_fire_their_own_pins(sim, clock):
    g = gate(sim, clock, pins=[17, 27])
    g.schedule(100.0, lane=1)
    g.schedule(100.1, lane=0)
    clock.advance(1.0)
    assert [a for a, _ in sim.pulses(27)] == pytest.approx([100.3])
    assert [a for a, _ in sim.pulses(17)] == pytest.approx([100.4])
    with pytest.raises(QCError, match="lane 2 does not exist"):
        g.schedule(100.0, lane=2)


def test_late_decision_fires_at_once_or_not_at_all(sim, clock):
    g = gate(sim, clock)
    clock.advance(0.5)  # the decision comes 500 ms after capture; the window was 300 ms
    res = g.schedule(100.0)
    assert res.late and res.fired
    clock.advance(0.1)
    assert [a for a, _ in sim.pulses(17)] == pytest.approx([100.5])
    skipper = gate(SimGPIO(clock), clock, pins=[5], late_policy="skip")
    res = skipper.schedule(100.0)
    assert res.late and not res.fired
    assert skipper.counts["late"] == 1 and skipper.counts["late_skipped"] == 1 and skipper.in_flight() == 0


def test_parts_closer_than_the_gap_merge_into_one_pulse(sim, clock):
    g = gate(sim, clock, pulse_ms=40, min_gap_ms=10)
    g.schedule(100.000)
    g.schedule(100.045)  # fires 5 ms after the first pulse ends: less than the 10 ms gap
    clock.advance(1.0)
    assert sim.pulses(17) == [(pytest.approx(100.3), pytest.approx(100.385))]


def test_encoder_distance_firing_at_a_varying_speed(clock):
    sim = SimGPIO(clock)
    cfg = GPIOConfig(gate={"pins": [17], "delay_ms": None, "distance_counts": 50, "pulse_ms": 20},
                     encoder={"pin": 22})
    enc = Encoder(sim, cfg.encoder)
    g = RejectGate(sim, cfg.gate, clock, encoder=enc)
    g.schedule(stamp=enc.count)  # captured at count 0
    for i in range(60):
        clock.advance(0.001 if i < 30 else 0.004)  # the belt slows down halfway
        sim.pulse_in(22)
        if i == 48:
            assert sim.pulses(17) == [] and sim.levels[17] == 0
    # fired exactly on the rising edge of the 50th count (each tick is 0.5 ms wide), whatever the speed
    (start, _end), = sim.pulses(17)
    assert start - 100.0 == pytest.approx(0.001 * 30 + 0.004 * 20 + 49 * 0.0005)
    assert enc.speed_mm_s() == pytest.approx(1 / 0.0045, rel=0.05)


def test_part_sensor_debounces(sim, clock):
    parts = []
    PartSensor(sim, GPIOConfig(part_sensor={"pin": 4, "debounce_ms": 5}).part_sensor, parts.append)
    sim.pulse_in(4, width=0.0005)
    clock.advance(0.002)
    sim.pulse_in(4)  # a bounce 2.5 ms after the first edge: ignored
    clock.advance(0.1)
    sim.pulse_in(4)
    assert parts == pytest.approx([100.0, 100.103])


def test_stack_light_states(sim):
    light = StackLight(sim, GPIOConfig(stack_light={"green": 5, "amber": 6, "red": 13, "horn": 19}).stack_light)
    light.set("running")
    assert [sim.levels[p] for p in (5, 6, 13, 19)] == [1, 0, 0, 0]
    light.set("fault")
    assert [sim.levels[p] for p in (5, 6, 13, 19)] == [0, 0, 1, 1]


def test_safe_state_closes_an_open_gate(sim, clock):
    g = gate(sim, clock, active_high=False, pins=[12])
    assert sim.levels[12] == 1  # active low: closed is high
    g.schedule(100.0)
    clock.advance(0.31)
    assert sim.levels[12] == 0
    g.safe()
    assert sim.levels[12] == 1 and g.in_flight() == 0


def test_real_clock_thread_fires_on_time():
    sim = SimGPIO(RealClock())
    g = RejectGate(sim, GateConfig(pins=[17], delay_ms=30, pulse_ms=5), sim.clock)
    t0 = time.monotonic()
    g.schedule(t0)
    g.close(drain=True)
    (start, end), = sim.pulses(17)
    assert start >= t0 + 0.03 and end > start  # never early; lateness is measured by the benchmark


@pytest.mark.parametrize("cfg, message", [
    ({"gate": {"pins": [17]}, "part_sensor": {"pin": 17}}, "part_sensor.pin and gate.pins\\[0\\] both use GPIO 17"),
    ({"gate": {"pins": [40]}}, "40 is not a BCM GPIO pin"),
    ({"gate": {"pulse_ms": 0}}, "gate.pulse_ms"),
    ({"gate": {"delay_ms": -5}}, "gate.delay_ms"),
    ({"gate": {"pulse_ms": 50, "part_pitch_ms": 40}}, "longer than gate.part_pitch_ms"),
    ({"gate": {"delay_ms": None, "distance_counts": 10}}, "needs an encoder"),
    ({"gate": {"delay_ms": 10, "distance_counts": 10}}, "exactly one of"),
    ({"gate": {"puls_ms": 5}}, "puls_ms"),
])
def test_bad_config_names_the_setting(cfg, message):
    with pytest.raises(ValidationError, match=message):
        GPIOConfig(**cfg)


def test_rpi_backend_names_the_package_when_missing():
    from firmware_io.gpio import make_backend

    with pytest.raises(QCError, match="RPi.GPIO"):
        make_backend("rpi")


def test_a_gpio_library_that_fails_at_setup_stops_qc_run_once_with_a_named_error(tmp_path, bundle_dir, synth32):
    """RPi.GPIO on a Pi 5 imports, then raises at the first setup(): `qc run` exits 2 (the unit's
    RestartPreventExitStatus) with one line naming the library, the board and the fix."""
    import subprocess
    import sys
    from pathlib import Path

    fake = tmp_path / "fake" / "RPi"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "GPIO.py").write_text(
        "BCM = OUT = IN = HIGH = LOW = PUD_UP = PUD_DOWN = BOTH = 0\n"
        "def setwarnings(flag): pass\n"
        "def setmode(mode): pass\n"
        "def cleanup(): pass\n"
        "def setup(*args, **kwargs):\n"
        "    raise RuntimeError('Cannot determine SOC peripheral base address')\n")
    root = Path(__file__).resolve().parents[1]
    broker = LocalBroker(tmp_path / "broker").start()
    listener = Listener(broker.port, "qc/+/+/alarm")
    try:
        out = subprocess.run([sys.executable, "-m", "qc", "run", "--bundle", str(bundle_dir), "--source",
                              str(synth32 / "test"), "--gpio", "rpi", "--max-parts", "2", "--mqtt", broker.url],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path,
                             env={"PYTHONPATH": f"{fake.parent}:{root}", "PATH": "/usr/bin:/bin"})
        assert wait_for(lambda: listener.msgs, timeout=5)  # the plant hears of it too: the broker was reachable
    finally:
        listener.stop()
        broker.stop()
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.strip().splitlines() if not line.startswith("[mqtt]")]
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert "GPIO 17 (output)" in lines[0] and "Cannot determine SOC peripheral base address" in lines[0]
    assert "rpi-lgpio" in lines[0]
    (alarm,) = [json.loads(payload) for _, payload, _ in listener.msgs]
    assert alarm["kind"] == "startup_failed" and "Cannot determine SOC peripheral base address" in alarm["message"]
