"""How every benchmark reports: its JSON on stdout with what produced it (command, machine, date, commit)
and, with QC_BENCH_SAVE=1 (`make bench` sets it), a copy in bench/results/<benchmark>.json, from which
`python -m bench.docs` writes docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["RESULTS", "emit", "machine"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def machine() -> str:
    """What the figures were measured on, in one line."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results", ":(exclude)docs"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()  # results are not code
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+changes" if dirty else "")


def emit(result: dict, command: str | None = None) -> dict:
    """Stamp, print and (with QC_BENCH_SAVE=1) save a benchmark's result; returns it."""
    result["recorded"] = {"command": command or "python -m " + " ".join([result.get("module", ""), *sys.argv[1:]]),
                          "machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                          "commit": _commit()}
    print(json.dumps(result, indent=1), flush=True)
    if os.environ.get("QC_BENCH_SAVE"):
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{result['benchmark']}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
