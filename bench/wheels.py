"""Every dependency of the box is a binary wheel for the boxes it is for: `pip download --only-binary=:all:`
for aarch64 with the Pi's and the Jetson's Python, offering every manylinux tag their glibc accepts (pip does
not try older tags by itself when given one platform). No compiler on the box, no source build.

    python -m bench.wheels          # needs the package index; prints JSON

Pi OS bookworm: Python 3.11, glibc 2.36. JetPack 6 (Ubuntu 22.04): Python 3.10, glibc 2.35.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench.record import ROOT, emit

BOXES = {"pi": ("3.11", 36), "jetson": ("3.10", 35)}  # extra: (Python, glibc 2.x)


def platforms(glibc_minor: int) -> list[str]:
    return ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, glibc_minor + 1)]


def requirements(extra: str) -> list[str]:
    """The checkout's own dependencies, the edge extra's and the box's, as pyproject.toml says now."""
    try:
        import tomllib
    except ModuleNotFoundError:
        raise SystemExit("bench.wheels reads pyproject.toml with tomllib: Python 3.11 or later") from None
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return project["dependencies"] + extras["edge"] + extras[extra]


def check(extra: str, python: str, glibc_minor: int) -> dict:
    with tempfile.TemporaryDirectory() as dest:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", dest,
               "--python-version", python, "--implementation", "cp",
               *[a for p in platforms(glibc_minor) for a in ("--platform", p)], *requirements(extra)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(p.name for p in Path(dest).glob("*.whl"))
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
    return {"python": python, "glibc": f"2.{glibc_minor}", "ok": out.returncode == 0, "wheels": wheels,
            "errors": errors}


def main() -> dict:
    result = {"module": "bench.wheels", "benchmark": "wheels",
              "boxes": {extra: check(extra, *spec) for extra, spec in BOXES.items()}}
    result["meets_target"] = all(b["ok"] for b in result["boxes"].values())
    return emit(result)


if __name__ == "__main__":
    main()
