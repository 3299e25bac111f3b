"""Reject-gate timing on the simulated backend with the real clock: fired-vs-scheduled error.

Prints JSON. Baseline in the same run: a naive gate that sleeps per part (time.sleep to each firing time)
from one thread, the way a first attempt would be written.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from bench.record import emit
from firmware_io.gpio import RealClock, RejectGate
from firmware_io.gpio.config import GateConfig
from firmware_io.gpio.sim import SimGPIO

DELAY_S = 0.25


def _errors(fired: list[float], expected: list[float]) -> dict:
    n = min(len(fired), len(expected))
    err_ms = (np.array(fired[:n]) - np.array(expected[:n])) * 1000
    return {"p50_ms": float(np.percentile(err_ms, 50)), "p99_ms": float(np.percentile(err_ms, 99)),
            "max_ms": float(np.max(np.abs(err_ms))), "missed": max(0, len(expected) - len(fired)),
            "duplicates": max(0, len(fired) - len(expected))}


def run_gate(rate: float, seconds: float) -> dict:
    sim = SimGPIO(RealClock())
    gate = RejectGate(sim, GateConfig(pins=[17], delay_ms=DELAY_S * 1000, pulse_ms=5, min_gap_ms=2,
                                      part_pitch_ms=1000 / rate), sim.clock)
    expected, period = [], 1 / rate
    t0 = time.monotonic()
    for i in range(int(rate * seconds)):
        capture = t0 + i * period
        while time.monotonic() < capture:
            time.sleep(max(0.0, capture - time.monotonic()))
        gate.schedule(capture)  # the decision arrives at once; the gate waits the delay
        expected.append(capture + DELAY_S)
    gate.close(drain=True, timeout=2 * DELAY_S + 1)
    fired = [a for a, _ in sim.pulses(17)]
    return _errors(fired, expected) | {"merged": gate.counts["merged"], "late": gate.counts["late"]}


def run_naive(rate: float, seconds: float) -> dict:
    """Baseline: one thread sleeping to each part's firing time in turn, relative sleeps."""
    sim = SimGPIO(RealClock())
    sim.setup_output(17, 0)
    n, period = int(rate * seconds), 1 / rate
    t0 = time.monotonic()

    def fire():
        time.sleep(DELAY_S)
        for _ in range(n):
            sim.write(17, 1)
            time.sleep(0.005)
            sim.write(17, 0)
            time.sleep(period - 0.005)

    th = threading.Thread(target=fire)
    th.start()
    th.join()
    expected = [t0 + DELAY_S + i * period for i in range(n)]
    return _errors([a for a, _ in sim.pulses(17)], expected)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=50.0, help="parts per second")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--quick", action="store_true", help="5 seconds instead of 60")
    a = p.parse_args(argv)
    seconds = 5.0 if a.quick else a.seconds
    result = {"module": "bench.reject_timing", "benchmark": "reject_timing", "rate_parts_s": a.rate, "seconds": seconds,
              "parts": int(a.rate * seconds), "gate": run_gate(a.rate, seconds),
              "baseline_naive_sleep_loop": run_naive(a.rate, seconds),
              "target": {"p99_ms": 2.0, "missed": 0, "duplicates": 0}}
    g = result["gate"]
    result["meets_target"] = g["p99_ms"] <= 2.0 and g["missed"] == 0 and g["duplicates"] == 0
    return emit(result)


if __name__ == "__main__":
    main()
