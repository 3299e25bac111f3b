"""The station costs the line nothing: pipeline capacity (unpaced 640x480 frames, as `qc bench`) with the
station serving a client that polls the live state and the frame at 5 Hz, against the station off, in the
same run (off, on, off, on; the means compared). Latency percentiles of both show whether any decision waited.

    qc bench --bundle BUNDLE --station          # JSON; target: capacity with the station >= 0.95 x without
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np

from bench.edge_pipeline import _frames, _Line, _pipeline
from edge.config import validate_config
from edge.station import Station

POLL_HZ = 5.0
TARGET = 0.95


def _station_with_a_client(runtime):
    import httpx

    station = Station(runtime, runtime.cfg.web.model_copy(update={"port": 0}), {}).start()
    done, polls = threading.Event(), {"state": 0, "frame": 0}

    def client():
        with httpx.Client(base_url=station.url.rstrip("/"), timeout=5) as http:
            while not done.wait(1 / POLL_HZ):
                polls["state"] += http.get("/api/state").status_code == 200
                polls["frame"] += http.get("/frame.jpg").status_code == 200

    thread = threading.Thread(target=client, daemon=True)
    thread.start()

    def stop():
        done.set()
        thread.join(5)
        station.stop()
        _station_with_a_client.polls.append(dict(polls))

    return stop


_station_with_a_client.polls = []


def beside_vs_off(bundle_path: Path, beside, seconds: float, warmup: float, rounds: int = 2) -> tuple[dict, dict, float]:
    """Pipeline capacity with `beside(runtime)` serving next to it against without, off then on `rounds`
    times in one run: (the runs, their mean parts/s, on / off)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = _frames(Path(tmp), 32)
        blobs = [np.fromfile(p, np.uint8) for p in paths]
        cfg = validate_config({"bundle": str(bundle_path), "store": {"dir": None}, "reload_watch": False,
                               "stats_interval_s": 3600, "source": {"kind": "folder", "path": tmp},
                               "gpio": {"gate": {"delay_ms": 100, "pulse_ms": 1, "min_gap_ms": 0}}})
        runs = {"off": [], "on": []}
        for which in ("off", "on") * rounds:
            runs[which].append(_pipeline(cfg, _Line(blobs), seconds, warmup, beside if which == "on" else None))
    mean = {k: float(np.mean([r["inspected_per_s"] for r in v])) for k, v in runs.items()}
    return runs, mean, round(mean["on"] / mean["off"], 3)


def per_run(runs: dict) -> dict:
    """Each run's parts/s and latency percentiles, in the order run."""
    return {"capacity_per_run": {k: [r["inspected_per_s"] for r in v] for k, v in runs.items()},
            "latency_ms": {k: {"p50": [r["latency_p50_ms"] for r in v], "p99": [r["latency_p99_ms"] for r in v]}
                           for k, v in runs.items()}}


def run_station_benchmark(bundle_path: Path, seconds: float = 5.0, warmup: float = 1.0) -> dict:
    _station_with_a_client.polls.clear()
    runs, mean, ratio = beside_vs_off(bundle_path, _station_with_a_client, seconds, warmup)
    return {"benchmark": "station", "bundle": str(bundle_path), "poll_hz": POLL_HZ, "seconds": seconds,
            "capacity_per_s": {k: round(v, 1) for k, v in mean.items()}, **per_run(runs),
            "polls_answered": _station_with_a_client.polls,
            "capacity_on_vs_off": ratio, "target": TARGET, "meets_target": ratio >= TARGET}
