"""Every dependency of the box is a binary wheel for the boxes it is for: `pip download --only-binary=:all:`
for aarch64 with the Pi's and the Jetson's Python, offering every manylinux tag their glibc accepts (the
same download as `qc package --wheels`). No compiler on the box, no source build.

    python -m bench.wheels          # needs the package index; prints JSON (what `qc package --wheels` packs)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.record import ROOT, emit
from qc.package import BOXES, download_wheels


def requirements(extras: str) -> list[str]:
    """The checkout's own dependencies and its extras', as pyproject.toml says now."""
    try:
        import tomllib
    except ModuleNotFoundError:
        raise SystemExit("bench.wheels reads pyproject.toml with tomllib: Python 3.11 or later") from None
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + [r for e in extras.split(",") for r in project["optional-dependencies"][e]]


def check(box: str) -> dict:
    with tempfile.TemporaryDirectory() as dest:
        out = download_wheels(requirements(BOXES[box].extras), box, Path(dest))
        wheels = sorted(p.name for p in Path(dest).glob("*.whl"))
        size = sum(p.stat().st_size for p in Path(dest).glob("*.whl"))
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
    return {"python": BOXES[box].python, "glibc": f"2.{BOXES[box].glibc_minor}", "ok": out.returncode == 0,
            "wheels": wheels, "megabytes": round(size / 1e6, 1), "errors": errors}


def main() -> dict:
    result = {"module": "bench.wheels", "benchmark": "wheels",
              "boxes": {box: check(box) for box in ("pi", "jetson")}}
    result["meets_target"] = all(b["ok"] for b in result["boxes"].values())
    return emit(result)


if __name__ == "__main__":
    main()
