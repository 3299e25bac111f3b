"""The model bundle: a folder with the model file and model.json, the one contract between training and edge.

model.json is the bundle's card, described once here (`BundleCard`) for the writer (training/export.py) and
the reader (the box). Format 2: the classifier output holds logits (`output.kind`), and `card_sha256` covers
the card's own content beside `sha256` over the model file, so neither can change unnoticed. Format 1 cards
are still read: their `output.kind` says logits or, where absent, softmax (bundles of both kinds exist).
Reading refuses an unknown format version, a hash that does not match, a card that breaks the schema, or
tensors that differ from the card, and names which.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from edge.decision import GOOD
from edge.errors import EdgeError
from edge.preprocess import RESIZE_METHODS
from firmware_io.errors import ConfigError
from firmware_io.settings import Strict, validated

__all__ = ["FORMAT_VERSION", "READABLE_VERSIONS", "Bundle", "BundleCard", "BundleError", "Tiling", "card_sha256",
           "check_tensors", "load_bundle", "tensor_spec", "write_bundle", "write_card"]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


class BundleError(EdgeError):
    """A bundle that must not be used, with the reason."""


class Tensor(Strict):
    name: str | None = Field(None, description="tensor name in the model")
    shape: list[int] = Field(description="static shape, batch first")
    dtype: str = Field(description="numpy dtype name: uint8, int8, float32")
    scale: float = Field(description="quantization scale (0 for float tensors)")
    zero_point: int = Field(description="quantization zero point")


class InputTensor(Tensor):
    color: Literal["rgb"] = Field("rgb", description="channel order the model takes")
    resize: Literal[tuple(RESIZE_METHODS)] = Field("area", description="how frames are resized to the input")
    range: str | None = Field(None, description="what the pixel values mean")


class OutputTensor(Tensor):
    kind: str = Field(description="logits (the edge applies the softmax) or softmax")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in ("logits", "softmax"):
            raise ValueError(f"output kind {v!r} is not known (this runtime reads ['softmax', 'logits'])")
        return v


class CamTensor(Tensor):
    kind: Literal["softmax-per-location", "logits-per-location"] = Field(
        "softmax-per-location", description="what each map cell holds (logits: the edge applies the softmax)")
    good_index: int = Field(0, ge=0, description="the good class's channel")


class Threshold(Strict):
    value: float = Field(gt=0, lt=1, description="reject when the defect score 1 - p(good) is at least this: inside "
                         "(0, 1), since 0 rejects every part and 1 passes every defect")
    method: str = Field(description="how it was chosen")
    chosen_on: str | None = Field(None, description="the split it was chosen on")
    target_recall: float | None = Field(None, gt=0, le=1, description="the defect recall it was chosen for")
    float_value: float | None = Field(None, description="the float model's threshold, before quantization")
    chosen_with: str | None = Field(None, description="the model whose scores chose it")
    recall_interval: tuple[float, float] | None = Field(
        None, description="the defect recall the split vouches for at this value: 95 % exact binomial interval")
    max_false_rejects: float | None = Field(None, gt=0, lt=1, description="the share of good parts it may reject")

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"threshold {v} is not a finite number")
        return v


def _plain_model_name(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+\.tflite", v) or v.startswith("."):
        raise ValueError(f"model file {v!r} must be a plain .tflite file name inside the bundle")
    return v


class EdgeTPUTarget(Strict):
    status: Literal["ready", "compiled"] = Field(description="ready: passed the operator check, not compiled")
    model_file: str | None = Field(None, description="the compiled model beside the CPU one")
    sha256: str | None = Field(None, description="sha256 of the compiled model")
    compiler: str | None = Field(None, description="edgetpu_compiler's version")
    operations: dict[str, int] = Field(default_factory=dict, description="operations on the Edge TPU and the CPU")

    @field_validator("model_file")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        return v if v is None else _plain_model_name(v)

    @property
    def compiled_model_file(self) -> str | None:
        """The compiled model's file name, once compiled."""
        return self.model_file if self.status == "compiled" else None

    @model_validator(mode="after")
    def _compiled_has_file(self):
        if self.status == "compiled" and not (self.model_file and self.sha256):
            raise ValueError("a compiled Edge TPU target needs model_file and sha256")
        return self


class Tiling(Strict):
    """A model that inspects a frame as overlapping tiles at the frame's own resolution (edge/tiles.py)."""

    size: int = Field(ge=16, description="tile side in frame pixels: the model's input side, no resize")
    overlap: int = Field(ge=0, description="pixels neighbouring tiles share")

    @model_validator(mode="after")
    def _overlap_below_size(self):
        if self.overlap >= self.size:
            raise ValueError(f"tile overlap {self.overlap} must be less than the tile size {self.size}")
        return self


class Reference(Strict):
    """An image the exported model scored: every load on a box scores it again and must agree."""

    file: str = Field(description="a PNG in the bundle folder: exactly what the model saw (its input size)")
    sha256: str = Field(description="sha256 of the file")
    label: str = Field(description="the photo's class")
    scores: dict[str, float] = Field(description="the exported model's class probabilities for it, by label")

    @field_validator("file")
    @classmethod
    def _plain_png(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+\.png", v):
            raise ValueError(f"reference {v!r} must be a plain .png file name inside the bundle")
        return v


class BundleCard(Strict):
    format_version: int = Field(description=f"{FORMAT_VERSION}; this runtime reads {READABLE_VERSIONS}")
    name: str = Field(min_length=1)
    created: str = Field(description="ISO 8601, UTC")
    labels: list[str] = Field(min_length=2, description=f"class names in output order; '{GOOD}' exactly once")
    input: InputTensor
    output: OutputTensor
    cam: CamTensor | None = Field(None, description="the class activation map output, when the model has one")
    threshold: Threshold
    tiling: Tiling | None = Field(None, description="set when the model inspects tiles rather than the resized frame")
    quantization: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(description="float and exported figures on the test split")
    training: dict[str, Any] = Field(description="arch, seed, dataset hash, run")
    notes: list[str] = Field(default_factory=list)
    edgetpu: EdgeTPUTarget | None = Field(None, description="the Edge TPU target, when exported for it")
    references: list[Reference] = Field(default_factory=list, description="test images with the scores the exported "
                                        "model gave them, scored again at every load")
    model_file: str = Field(description="the model's file name inside the bundle folder")
    sha256: str = Field(description="sha256 of the model file")
    card_sha256: str | None = Field(None, description="sha256 of this card without this field (format 2)")

    @field_validator("labels")
    @classmethod
    def _one_good(cls, v: list[str]) -> list[str]:
        if v.count(GOOD) != 1:
            raise ValueError(f"labels {v} must hold '{GOOD}' exactly once")
        if len(set(v)) != len(v):
            raise ValueError(f"labels {v} repeat a class")
        return v

    @field_validator("model_file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return _plain_model_name(v)

    @model_validator(mode="after")
    def _version_fields(self):
        if self.format_version >= 2 and self.card_sha256 is None:
            raise ValueError("format 2 needs card_sha256")
        if self.tiling and self.input.shape[1:3] != [self.tiling.size] * 2:
            raise ValueError(f"tiling.size {self.tiling.size} differs from the input shape {self.input.shape}")
        if self.output.shape[-1] != len(self.labels):
            raise ValueError(f"labels {self.labels} name {len(self.labels)} classes; the output has "
                             f"{self.output.shape[-1]}")
        for ref in self.references:
            if set(ref.scores) != set(self.labels):
                raise ValueError(f"reference {ref.file} scores {sorted(ref.scores)}, not the labels {self.labels}")
        return self


def card_sha256(card: dict) -> str:
    """sha256 of a card's canonical JSON without its own `card_sha256`."""
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Bundle:
    """A checked bundle: its folder and its card."""

    def __init__(self, path: Path, card: BundleCard, models: dict[str, bytes] | None = None):
        self.path, self.card = Path(path), card
        self._models = dict(models or {})  # file name -> its verified content (models, reference images)

    @property
    def meta(self) -> dict:
        """The card as a plain dict (JSON types), for reports and tests."""
        return self.card.model_dump(mode="json")

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def model_path(self) -> Path:
        return self.path / self.card.model_file

    def model_for(self, backend: str) -> Path:
        """The model file a backend runs: the CPU model, or the compiled one for the Edge TPU."""
        if backend != "edgetpu":
            return self.model_path
        target = self.card.edgetpu
        if target and target.compiled_model_file:
            return self.path / target.compiled_model_file
        if self.only_compiled:
            return self.model_path
        state = "is Edge TPU ready, not compiled" if target else "was not exported for the Edge TPU"
        raise BundleError(f"{self.path} {state}: compile it with `qc bundle compile {self.path}` on an x86-64 "
                          "machine with edgetpu_compiler" + ("" if target else ", after `qc export --edgetpu`"))

    def model_bytes(self, backend: str) -> bytes:
        """The model a backend runs, as verified bytes in memory: an interpreter given a file maps it, and a
        file overwritten in place under a mapping kills the process (SIGBUS)."""
        file = self.model_for(backend)
        if file.name not in self._models:
            content = file.read_bytes()
            expected = self.card.sha256 if file == self.model_path else self.card.edgetpu.sha256
            _check_sha256(file, content, expected)
            self._models[file.name] = content
        return self._models[file.name]

    def reference_bytes(self, ref: Reference) -> bytes:
        if ref.file not in self._models:
            self._models[ref.file] = _check_sha256(self.path / ref.file, (self.path / ref.file).read_bytes(), ref.sha256)
        return self._models[ref.file]

    @property
    def only_compiled(self) -> bool:
        """A format 1 Edge TPU bundle: its one model is the compiled one, with no CPU model beside it."""
        return self.card.model_file.endswith("_edgetpu.tflite")

    @property
    def compiled_for_edgetpu(self) -> bool:
        return bool(self.card.edgetpu and self.card.edgetpu.compiled_model_file) or self.only_compiled

    @property
    def labels(self) -> list[str]:
        return self.card.labels

    @property
    def good_index(self) -> int:
        return self.labels.index(GOOD)

    @property
    def input_size(self) -> tuple[int, int]:
        _, h, w, _ = self.card.input.shape
        return h, w

    @property
    def tiling(self) -> Tiling | None:
        return self.card.tiling

    @property
    def resize(self) -> str:
        """How frames are resized to the input, as in training (`preprocess.RESIZE_METHODS`)."""
        return self.card.input.resize

    @property
    def output_kind(self) -> str:
        return self.card.output.kind

    @property
    def threshold(self) -> float:
        return self.card.threshold.value

    @property
    def sha256(self) -> str:
        return self.card.sha256

    def describe(self) -> str:
        """The card in a few lines, for `qc bundle show`."""
        c, i = self.card, self.card.input
        return "\n".join([
            f"{c.name} (format {c.format_version}, created {c.created})",
            f"model     {c.model_file}  sha256 {c.sha256}",
            f"labels    {c.labels}",
            f"input     {i.shape} {i.dtype} scale {i.scale} zero point {i.zero_point} {i.color} resize {i.resize}",
            f"output    {c.output.kind}",
            f"tiles     {f'{c.tiling.size} px, {c.tiling.overlap} px overlap, at the frame resolution' if c.tiling else 'none: the frame is resized to the input'}",
            f"edge tpu  {c.edgetpu.status + (' ' + c.edgetpu.model_file if c.edgetpu.model_file else '') if c.edgetpu else 'not exported for it'}",
            f"threshold {c.threshold.value:.4f} ({c.threshold.method})" + (
                " recall {:.3f}-{:.3f} (95 %)".format(*c.threshold.recall_interval) if c.threshold.recall_interval else ""),
            f"quantize  {json.dumps(c.quantization)}",
            f"training  {json.dumps(c.training)}",
            f"metrics   {json.dumps(c.metrics)}"])


def write_bundle(out: Path, model: bytes, card: dict, force: bool = False,
                 model_file: str = "model.tflite") -> Bundle:
    """Write the model and its card (checked against the schema before anything is written)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise BundleError(f"{out} already exists; pass --force to replace it")
    checked = _checked({"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **card,
                        "model_file": model_file, "sha256": hashlib.sha256(model).hexdigest()})
    out.mkdir(parents=True, exist_ok=True)
    (out / model_file).write_bytes(model)
    return _write_card(out, checked)


def write_card(path: Path, card: dict) -> Bundle:
    """Check a card against the schema, hash it, and replace the bundle's model.json with it atomically."""
    return _write_card(path, _checked(card))


def _checked(card: dict) -> dict:
    """The card as the schema reads it, in the current format, with its card_sha256."""
    try:
        checked = validated(BundleCard, card | {"format_version": FORMAT_VERSION, "card_sha256": ""},
                            "bundle card").model_dump(mode="json")
    except ConfigError as exc:
        raise BundleError(str(exc)) from exc
    return checked | {"card_sha256": card_sha256(checked)}


def _write_card(path: Path, checked: dict) -> Bundle:
    tmp = Path(path) / "model.json.tmp"
    tmp.write_text(json.dumps(checked, indent=1) + "\n")
    os.replace(tmp, Path(path) / "model.json")
    return Bundle(Path(path), BundleCard.model_validate(checked))


def load_bundle(path: str | Path, key: Path | None = None) -> Bundle:
    """A bundle whose card validates and whose files match the card's hashes; with `key` (a public key), also
    signed with its private key over these very files (edge/signing.py)."""
    path = Path(path)
    card_path = path / "model.json"
    if not card_path.is_file():
        raise BundleError(f"{path}: not a bundle (no model.json)")
    try:
        card_bytes = card_path.read_bytes()
        raw = json.loads(card_bytes.decode("utf-8"))
    except OSError as exc:
        raise BundleError(f"{card_path}: cannot be read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{card_path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{card_path}: not a JSON object")
    version = raw.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(f"{card_path}: format_version {version!r} is not known "
                          f"(this runtime reads {list(READABLE_VERSIONS)})")
    if version == 1 and isinstance(raw.get("output"), dict):
        raw["output"] = {"kind": "softmax", **raw["output"]}  # format 1 without a kind held probabilities
    try:
        card = validated(BundleCard, raw, str(card_path))
    except ConfigError as exc:
        raise BundleError(str(exc)) from exc
    if version >= 2 and card_sha256(raw) != card.card_sha256:
        raise BundleError(f"{card_path}: card_sha256 does not match the card's content (edited, tampered or "
                          "truncated)")
    model = path / card.model_file
    targets = [(model, card.sha256)]
    if card.edgetpu and card.edgetpu.compiled_model_file:
        targets.append((path / card.edgetpu.compiled_model_file, card.edgetpu.sha256))
    targets += [(path / ref.file, ref.sha256) for ref in card.references]
    models = {}
    for file, expected in targets:
        if not file.is_file():
            raise BundleError(f"{path}: {file.name} is missing")
        try:
            models[file.name] = _check_sha256(file, file.read_bytes(), expected)
        except OSError as exc:
            raise BundleError(f"{file}: cannot be read ({exc.strerror})") from None
    if key is not None:
        from edge.signing import verify

        try:
            verify(path, key, {card_path.name: card_bytes, **models})
        except EdgeError as exc:
            raise BundleError(str(exc)) from None
    return Bundle(path, card, models)


def _check_sha256(file: Path, content: bytes, expected: str) -> bytes:
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected:
        raise BundleError(f"{file}: sha256 {actual[:12]}... does not match model.json's {expected[:12]}... "
                          "(truncated, tampered or from another bundle)")
    return content


def tensor_spec(detail: dict) -> dict:
    """An interpreter tensor detail as model.json describes it."""
    scale, zp = detail["quantization"]
    return {"shape": [int(v) for v in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale), "zero_point": int(zp)}


def check_tensors(bundle: Bundle, inputs: list[dict], outputs: list[dict]) -> None:
    """Compare the interpreter's tensor details with the card; raise naming every mismatch."""
    problems = []
    by_name = {d["name"]: d for d in outputs}
    card = bundle.card
    for role, want, got in [("input", card.input, inputs[0]),
                            ("output", card.output, by_name.get(card.output.name)),
                            ("cam", card.cam, by_name.get(card.cam.name) if card.cam else None)]:
        if want is None:
            continue
        if got is None:
            problems.append(f"{role} tensor '{want.name}' is not in the model")
            continue
        spec = tensor_spec(got)
        for key in ("shape", "dtype", "scale", "zero_point"):
            expected = getattr(want, key)
            same = np.isclose(expected, spec[key], rtol=1e-6) if key == "scale" else expected == spec[key]
            if not same:
                problems.append(f"{role} {key}: model.json says {expected}, the model has {spec[key]}")
    if problems:
        raise BundleError(f"{bundle.path}: tensors do not match model.json: " + "; ".join(problems))
