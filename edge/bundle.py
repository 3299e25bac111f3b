"""The model bundle: a folder with model.tflite and model.json, the one contract between training and edge.

Reading refuses a bundle whose sha256 does not match, whose format_version is unknown, or whose
tensors do not match model.json, and says which.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.errors import QCError

__all__ = ["FORMAT_VERSION", "BundleError", "Bundle", "load_bundle", "write_bundle", "check_tensors", "tensor_spec"]

FORMAT_VERSION = 1
OUTPUT_KINDS = ("softmax", "logits")  # what the classifier output holds; the edge applies softmax to logits
REQUIRED = ("format_version", "name", "created", "labels", "input", "output", "threshold", "metrics",
            "training", "sha256", "model_file")


class BundleError(QCError):
    """A bundle that must not be used, with the reason."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    meta: dict

    @property
    def model_path(self) -> Path:
        return self.path / self.meta["model_file"]

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]

    @property
    def good_index(self) -> int:
        return self.labels.index("good")

    @property
    def input_size(self) -> tuple[int, int]:
        _, h, w, _ = self.meta["input"]["shape"]
        return h, w

    @property
    def resize(self) -> str:
        """How frames are resized to the input, as in training (`preprocess.RESIZE_METHODS`)."""
        return self.meta["input"].get("resize", "area")

    @property
    def output_kind(self) -> str:
        return self.meta["output"].get("kind", "softmax")  # bundles from before logits say nothing

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"]["value"])

    @property
    def sha256(self) -> str:
        return self.meta["sha256"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(out: Path, model: bytes, meta: dict, force: bool = False, model_file: str = "model.tflite") -> Bundle:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise BundleError(f"{out} already exists; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    (out / model_file).write_bytes(model)
    meta = {"format_version": FORMAT_VERSION, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **meta, "model_file": model_file, "sha256": hashlib.sha256(model).hexdigest()}
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise BundleError(f"bundle metadata lacks {missing}")
    (out / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    return Bundle(out, meta)


def load_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    meta_path = path / "model.json"
    if not meta_path.is_file():
        raise BundleError(f"{path}: not a bundle (no model.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path}: not valid JSON ({exc})") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{meta_path}: format_version {meta.get('format_version')!r} is not known "
                          f"(this runtime reads {FORMAT_VERSION})")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise BundleError(f"{meta_path}: missing field(s) {missing}")
    if "good" not in meta["labels"]:
        raise BundleError(f"{meta_path}: labels {meta['labels']} have no 'good' class")
    kind = Bundle(path, meta).output_kind
    if kind not in OUTPUT_KINDS:
        raise BundleError(f"{meta_path}: output kind {kind!r} is not known (this runtime reads {list(OUTPUT_KINDS)})")
    model = path / meta["model_file"]
    if not model.is_file():
        raise BundleError(f"{path}: {meta['model_file']} is missing")
    actual = sha256_file(model)
    if actual != meta["sha256"]:
        raise BundleError(f"{model}: sha256 {actual[:12]}... does not match model.json's {meta['sha256'][:12]}... "
                          "(truncated, tampered or from another bundle)")
    return Bundle(path, meta)


def tensor_spec(detail: dict) -> dict:
    """An interpreter tensor detail as model.json describes it."""
    scale, zp = detail["quantization"]
    return {"shape": [int(v) for v in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale), "zero_point": int(zp)}


def check_tensors(bundle: Bundle, inputs: list[dict], outputs: list[dict]) -> None:
    """Compare the interpreter's tensor details with model.json; raise naming every mismatch."""
    problems = []
    by_name = {d["name"]: d for d in outputs}
    for role, want, got in [("input", bundle.meta["input"], inputs[0]),
                            ("output", bundle.meta["output"], by_name.get(bundle.meta["output"].get("name"))),
                            ("cam", bundle.meta.get("cam"), by_name.get((bundle.meta.get("cam") or {}).get("name")))]:
        if want is None:
            continue
        if got is None:
            problems.append(f"{role} tensor '{want.get('name')}' is not in the model")
            continue
        spec = tensor_spec(got)
        for key in ("shape", "dtype", "scale", "zero_point"):
            if key not in want:
                continue
            same = np.isclose(want[key], spec[key], rtol=1e-6) if key == "scale" else want[key] == spec[key]
            if not same:
                problems.append(f"{role} {key}: model.json says {want[key]}, the model has {spec[key]}")
    if problems:
        raise BundleError(f"{bundle.path}: tensors do not match model.json: " + "; ".join(problems))
