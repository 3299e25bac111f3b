"""`qc package`: what a box needs in one tar.gz with SHA256SUMS, each part checked before it is packed: the
bundle, the config, the systemd unit, the project's own wheel, `install.sh` and, with `wheels`, every
dependency as a binary wheel for the box, so that it installs with no package index at all."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

from edge.errors import EdgeError

__all__ = ["BOXES", "download_wheels", "package"]

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "deploy" / "install.sh"


class Box(NamedTuple):
    python: str | None  # the box's Python (None: this machine's)
    glibc_minor: int | None  # its glibc 2.x: the newest manylinux tag it accepts
    extras: str


# Pi OS bookworm: Python 3.11, glibc 2.36. JetPack 6 (Ubuntu 22.04): Python 3.10, glibc 2.35. host: this machine.
BOXES = {"pi": Box("3.11", 36, "edge,plc,pi"), "jetson": Box("3.10", 35, "edge,plc,jetson"),
         "host": Box(None, None, "edge,plc")}


def platforms(glibc_minor: int) -> list[str]:
    """Every aarch64 manylinux tag a glibc accepts: given one --platform, pip tries no older tag by itself
    (ai-edge-litert's aarch64 wheel is manylinux_2_27)."""
    return ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, glibc_minor + 1)]


def download_wheels(requirements: list[str], box: str, dest: Path) -> subprocess.CompletedProcess:
    """`pip download --only-binary=:all:` for the box: binary wheels or nothing, no compiler on the box."""
    python, glibc_minor, _ = BOXES[box]
    target = [] if python is None else ["--python-version", python, "--implementation", "cp",
                                        *[a for p in platforms(glibc_minor) for a in ("--platform", p)]]
    return subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest",
                           str(dest), *target, *requirements], capture_output=True, text=True)


def _pip_error(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.splitlines() if "ERROR" in line] or out.stderr.strip().splitlines()[-1:]
    return " ".join(lines)[:400]


def build_wheel(dest: Path) -> Path:
    """The project's own wheel, built from this source checkout."""
    if not (ROOT / "pyproject.toml").is_file():
        raise EdgeError(f"qc package builds the project's wheel from its source checkout; {ROOT} is not one "
                        "(install with pip install -e from a clone)")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest),
                          str(ROOT)], capture_output=True, text=True)
    wheels = sorted(dest.glob("qc_inspect-*.whl"))
    if out.returncode or not wheels:
        raise EdgeError(f"building the project's wheel failed: {_pip_error(out)}")
    return wheels[0]


def package(bundle: Path, config: Path, unit: Path, out: Path, box: str = "pi", wheels: bool = False) -> dict:
    from edge.bundle import load_bundle
    from edge.config import load_config

    checked = load_bundle(bundle)  # refuse to ship a broken bundle
    cfg = load_config(config, {"bundle": str(bundle)})
    checked.model_for(cfg.classifier.backend)  # an Edge TPU box needs the compiled model: say so here, not there
    with tempfile.TemporaryDirectory() as tmp:
        own = build_wheel(Path(tmp))
        extras = BOXES[box].extras
        files = {f"bundle/{p.name}": p for p in sorted(bundle.iterdir()) if p.is_file()}
        files |= {"edge.yaml": config, "qc-inspect.service": unit, "install.sh": INSTALL, own.name: own}
        if wheels:
            dest = Path(tmp) / "wheels"
            got = download_wheels([f"{own}[{extras}]"], box, dest)
            if got.returncode:
                raise EdgeError(f"the {box} box's wheels could not all be had as binary wheels: {_pip_error(got)}")
            files |= {f"wheels/{p.name}": p for p in sorted(dest.glob("*.whl")) if p.name != own.name}
        texts = {"extras": f"{extras}\n"}
        sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {name}\n" for name, p in files.items())
        sums += "".join(f"{hashlib.sha256(t.encode()).hexdigest()}  {name}\n" for name, t in texts.items())
        with tarfile.open(out, "w:gz") as tar:
            for name, p in files.items():
                tar.add(p, arcname=f"qc-box/{name}")
            for name, text in (texts | {"SHA256SUMS": sums}).items():
                info = tarfile.TarInfo(f"qc-box/{name}")
                info.size = len(text.encode())
                tar.addfile(info, io.BytesIO(text.encode()))
    return {"package": str(out), "box": box, "extras": extras, "files": len(files) + len(texts) + 1,
            "wheels": sum(name.startswith("wheels/") for name in files),
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
            "on the box": f"tar xzf {out.name} && sudo qc-box/install.sh"}
