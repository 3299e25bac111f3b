"""Running statistics: fps, latency percentiles per stage and end to end, counts per decision and reason."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np

__all__ = ["Stats"]


class Stats:
    def __init__(self, window: int = 2048):
        self.started = time.monotonic()
        self.window = window
        self.latency: dict[str, deque] = {}
        self.counts: Counter = Counter()
        self._done: deque = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, decision: str, reason: str, stages_ms: dict[str, float]) -> None:
        with self._lock:
            self.counts[f"decision.{decision}"] += 1
            self.counts[f"reason.{reason}"] += 1
            self.counts["parts"] += 1
            for stage, ms in stages_ms.items():
                self.latency.setdefault(stage, deque(maxlen=self.window)).append(ms)
            self._done.append(time.monotonic())

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def totals(self) -> dict[str, int]:
        """The raw counts (decision.pass, reason.ok, parts, ...), without the latency work of a snapshot."""
        with self._lock:
            return dict(self.counts)

    def snapshot(self) -> dict:
        with self._lock:
            done = list(self._done)
            lat = {k: np.asarray(v) for k, v in self.latency.items() if v}
            counts = dict(self.counts)
        fps = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 and done[-1] > done[0] else 0.0
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "fps": round(fps, 2),
            "latency_ms": {k: {f"p{q}": round(float(np.percentile(v, q)), 2) for q in (50, 95, 99)}
                           for k, v in lat.items()},
            "counts": {
                "parts": counts.get("parts", 0),
                "decision": {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("decision.")},
                "reason": {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("reason.")},
                **{k: v for k, v in counts.items() if "." not in k and k != "parts"},
            },
        }

    @staticmethod
    def line(s: dict) -> str:
        e2e = s["latency_ms"].get("end_to_end", {})
        return (f"[stats] parts {s['counts']['parts']}  fps {s['fps']:.1f}  decisions {s['counts']['decision']}  "
                f"reasons {s['counts']['reason']}  latency p50 {e2e.get('p50', 0):.1f} ms  p99 {e2e.get('p99', 0):.1f} ms")
