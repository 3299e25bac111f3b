"""`qc package`: what a box needs (bundle, config, systemd unit) in one tar.gz with SHA256SUMS, each part
checked before it is packed."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from edge.bundle import load_bundle
from edge.config import load_config

__all__ = ["package"]


def package(bundle: Path, config: Path, unit: Path, out: Path) -> dict:
    checked = load_bundle(bundle)  # refuse to ship a broken bundle
    cfg = load_config(config, {"bundle": str(bundle)})
    checked.model_for(cfg.classifier.backend)  # an Edge TPU box needs the compiled model: say so here, not there
    files = {f"bundle/{p.name}": p for p in sorted(bundle.iterdir()) if p.is_file()}
    files |= {"edge.yaml": config, "qc-inspect.service": unit}
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {name}\n" for name, p in files.items())
    with tarfile.open(out, "w:gz") as tar:
        for name, p in files.items():
            tar.add(p, arcname=f"qc-box/{name}")
        info = tarfile.TarInfo("qc-box/SHA256SUMS")
        info.size = len(sums)
        tar.addfile(info, io.BytesIO(sums.encode()))
    return {"package": str(out), "files": list(files) + ["SHA256SUMS"],
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
            "on the box": "tar xzf box.tar.gz && cd qc-box && sha256sum -c SHA256SUMS && qc bundle verify bundle"}
