"""What the runtime hands its events to. MQTT implements it (firmware_io.mqtt); MemoryTelemetry keeps the
latest ones for tests and for runs without a broker; JsonlTee also writes each inspection to a file."""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from pathlib import Path
from typing import Protocol

__all__ = ["JsonlTee", "MemoryTelemetry", "Telemetry"]


class Telemetry(Protocol):
    def inspection(self, event: dict) -> bool | None: ...  # False: refused (a full spool), else taken
    def stats(self, snapshot: dict) -> None: ...
    def alarm(self, kind: str, message: str, **extra) -> None: ...
    def info(self, inventory: dict) -> None: ...  # what the box is and runs: kept, told again on every connect
    def close(self) -> None: ...


class MemoryTelemetry:
    """The last `keep` events of each kind: a run without a broker must not grow without bound."""

    def __init__(self, keep: int = 10_000):
        self.inspections: deque[dict] = deque(maxlen=keep)
        self.stats_: deque[dict] = deque(maxlen=keep)
        self.alarms: deque[dict] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def inspection(self, event: dict) -> None:
        with self._lock:
            self.inspections.append(event)

    def stats(self, snapshot: dict) -> None:
        self.stats_.append(snapshot)

    def alarm(self, kind: str, message: str, **extra) -> None:
        with self._lock:
            self.alarms.append({"kind": kind, "message": message, **extra})

    def info(self, inventory: dict) -> None:
        self.inventory = inventory

    def close(self) -> None:
        pass


class JsonlTee:
    """Passes events on and appends each inspection to a JSONL file (for scripts and the demo)."""

    def __init__(self, inner: Telemetry, path: Path):
        self.inner = inner
        self.file = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", buffering=1)

    def inspection(self, event: dict) -> bool | None:
        """Spooled first: a line in the file is an event that will be delivered, unless it says `refused`."""
        taken = self.inner.inspection(event)
        self.file.write(json.dumps(event if taken is not False else event | {"refused": "spool_full"}) + "\n")
        return taken

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def close(self) -> None:
        self.inner.close()
        self.file.close()
