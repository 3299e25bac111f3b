"""Prometheus metrics of a running inspection (`/metrics` on the station), through prometheus-client, names
prefixed `qc_`. Parts and latencies are counted as they happen, into a registry of the runtime's own; the
gate's, the spool's and the camera's counters are read from them when Prometheus scrapes."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["Metrics"]

LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _Read:
    """Counters and gauges owned by other parts (gate, spool, camera), read at scrape time."""

    def __init__(self, read: Callable[[], dict]):
        self.read = read

    def collect(self):
        now = self.read()
        gate = CounterMetricFamily("qc_gate_events", "reject gate events by kind (late, overflow, fired...)",
                                   labels=["kind"])
        for kind, n in sorted(now.get("gate", {}).items()):
            if isinstance(n, int):
                gate.add_metric([kind], n)
        yield gate
        yield GaugeMetricFamily("qc_spool_events", "events in the MQTT spool, not yet acknowledged",
                                value=now.get("spool", 0))
        yield CounterMetricFamily("qc_camera_reconnects", "times the camera was reopened after a loss",
                                  value=now.get("camera_lost", 0))
        yield GaugeMetricFamily("qc_paused", "1 while the line is paused by command", value=int(now.get("paused", 0)))


class Metrics:
    def __init__(self, read: Callable[[], dict]):
        self.registry = CollectorRegistry()
        self.parts = Counter("qc_parts", "parts decided, by decision and reason", ["decision", "reason"],
                             registry=self.registry)
        self.latency = Histogram("qc_latency_seconds", "time per stage of a part (end_to_end: capture to decision)",
                                 ["stage"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.alarms = Counter("qc_alarms", "alarms raised, by kind", ["kind"], registry=self.registry)
        self.model = Info("qc_model", "the model running", registry=self.registry)
        self.registry.register(_Read(read))

    def part(self, decision: str, reason: str, stages_ms: dict[str, float]) -> None:
        self.parts.labels(decision, reason).inc()
        for stage, ms in stages_ms.items():
            self.latency.labels(stage).observe(ms / 1000)

    def alarm(self, kind: str) -> None:
        self.alarms.labels(kind).inc()

    def running(self, name: str, sha256: str, threshold: float) -> None:
        self.model.info({"name": name, "sha256": sha256, "threshold": f"{threshold:g}"})
