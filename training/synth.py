"""Synthetic defect generator in the spirit of DAGM 2007: textured industrial surfaces with defects.

Every image comes from its own seeded generator, so the same seed gives byte-identical output.
Pure numpy/OpenCV: no TensorFlow needed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from training.config import DEFECTS, SynthConfig
from training.data import GOOD, SPLIT_FRACTIONS, split_sizes
from training.errors import TrainingError

__all__ = ["DEFECTS", "SURFACES", "SynthConfig", "make_sample", "generate"]

SURFACES = ("brushed", "woven", "grain", "grit")
MIN_SIZE = 32


def validate(cfg: SynthConfig) -> None:
    """Name the setting at fault before anything is written."""
    if cfg.count < 1:
        raise TrainingError(f"--count must be at least 1, got {cfg.count}")
    if cfg.size < MIN_SIZE:
        raise TrainingError(f"--size {cfg.size} is too small for the defects: the minimum is {MIN_SIZE}")
    unknown = sorted(set(cfg.classes) - set(DEFECTS))
    if unknown:
        raise TrainingError(f"unknown defect class(es) {unknown}; choose from {list(DEFECTS)}")
    if not cfg.classes:
        raise TrainingError("--classes needs at least one defect class")
    if not 0.0 < cfg.good_fraction < 1.0:
        raise TrainingError(f"good_fraction must be in (0, 1), got {cfg.good_fraction}")
    plan = Counter(_class_plan(cfg))
    if len(plan) < 1 + len(cfg.classes) or min(plan.values()) < 3:
        raise TrainingError(f"--count {cfg.count} is too small: every class needs at least 3 images "
                            "(one each for train, val and test)")


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    noise = rng.standard_normal((n, n)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def _surface(rng: np.random.Generator, n: int, family: str) -> np.ndarray:
    """A zero-mean texture of unit-ish amplitude, n x n, float32."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if family == "brushed":
        noise = rng.standard_normal((n, n)).astype(np.float32)
        klen = int(rng.integers(n // 8, n // 3)) | 1
        tex = cv2.blur(noise, (klen, 1)) * np.sqrt(klen)
    elif family == "woven":
        period = rng.uniform(n / 24, n / 10)
        tex = np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)
        tex = tex + 0.3 * rng.standard_normal((n, n)).astype(np.float32)
    elif family == "grain":
        warp = _smooth_noise(rng, n, n / 10) * rng.uniform(n / 20, n / 8)
        period = rng.uniform(n / 16, n / 6)
        tex = np.sin(2 * np.pi * (yy + warp) / period) + 0.2 * _smooth_noise(rng, n, 1.0)
    else:  # grit: cast surface, speckle at two scales
        tex = 0.7 * _smooth_noise(rng, n, 0.8) + 0.5 * _smooth_noise(rng, n, n / 40 + 1)
    return (tex / (np.abs(tex).max() + 1e-6)).astype(np.float32)


def _rotate(img: np.ndarray, angle: float) -> np.ndarray:
    n = img.shape[0]
    m = cv2.getRotationMatrix2D((n / 2, n / 2), angle, 1.0)
    return cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _bezier(rng: np.random.Generator, n: int, length: float) -> np.ndarray:
    p0 = rng.uniform(0.15 * n, 0.85 * n, 2)
    direction = rng.uniform(0, 2 * np.pi)
    p2 = p0 + length * np.array([np.cos(direction), np.sin(direction)])
    p1 = (p0 + p2) / 2 + rng.normal(0, length / 4, 2)
    t = np.linspace(0, 1, 24)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    return np.clip(pts, 0, n - 1).astype(np.int32)


def _defect_mask(rng: np.random.Generator, n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (binary mask uint8 0/255, soft intensity profile float32 in [0, 1])."""
    mask = np.zeros((n, n), np.uint8)
    s = n / 128.0
    if kind == "scratch":
        pts = _bezier(rng, n, rng.uniform(0.25, 0.6) * n)
        cv2.polylines(mask, [pts], False, 255, max(1, round(rng.uniform(1, 2.5) * s)), cv2.LINE_AA)
        soft = mask.astype(np.float32) / 255
    elif kind == "spot":
        for _ in range(int(rng.integers(1, 4))):
            c = rng.uniform(0.15 * n, 0.85 * n, 2).astype(int)
            axes = (max(2, int(rng.uniform(2, 7) * s)), max(2, int(rng.uniform(2, 7) * s)))
            cv2.ellipse(mask, tuple(int(v) for v in c), axes, rng.uniform(0, 180), 0, 360, 255, -1)
        soft = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 0.8)
    elif kind == "crack":
        tips = [rng.uniform(0.25 * n, 0.75 * n, 2)]
        heading = rng.uniform(0, 2 * np.pi)
        for step in range(int(rng.integers(25, 45) * s)):
            p = tips[-1]
            heading += rng.normal(0, 0.5)
            q = np.clip(p + 2.0 * np.array([np.cos(heading), np.sin(heading)]), 0, n - 1)
            cv2.line(mask, tuple(p.astype(int)), tuple(q.astype(int)), 255, 1)
            tips.append(q)
            if step % 12 == 11:  # a branch
                heading += rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
        soft = mask.astype(np.float32) / 255
    else:  # stain: a low-contrast smooth blob
        c = rng.uniform(0.3 * n, 0.7 * n, 2).astype(int)
        axes = (int(rng.uniform(8, 22) * s), int(rng.uniform(8, 22) * s))
        cv2.ellipse(mask, tuple(int(v) for v in c), axes, rng.uniform(0, 180), 0, 360, 255, -1)
        soft = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 3 * s)
    return np.where(mask > 0, 255, 0).astype(np.uint8), soft


CONTRAST = {"stain": (16, 36), "spot": (30, 75), "scratch": (35, 75), "crack": (40, 85)}  # gray levels


def defect(rng: np.random.Generator, n: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One defect of `kind` for an n x n image: its mask (uint8 0/255) and the gray levels it adds (float32;
    spots and cracks are dark, scratches and stains either way). Also painted on good photos by good-only
    training (training/goodonly.py)."""
    mask, soft = _defect_mask(rng, n, kind)
    sign = -1.0 if kind in ("spot", "crack") or rng.random() < 0.5 else 1.0
    return mask, (sign * rng.uniform(*CONTRAST[kind]) * soft).astype(np.float32)


def make_sample(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One grayscale image (uint8, size x size) and its defect mask (None for `good`)."""
    family = SURFACES[int(rng.integers(len(SURFACES)))]
    tex = _rotate(_surface(rng, size, family), rng.uniform(0, 180))
    base = rng.uniform(80, 170)
    img = base + rng.uniform(8, 22) * tex
    # lighting: a random linear ramp plus a soft vignette, so a global threshold cannot find defects
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    img += rng.uniform(0, 45) * (np.cos(angle) * xx + np.sin(angle) * yy)
    img -= rng.uniform(0, 40) * (xx**2 + yy**2)
    mask = None
    if kind != GOOD:
        mask, delta = defect(rng, size, kind)
        img += delta
    img += rng.normal(0, rng.uniform(1.5, 5), img.shape).astype(np.float32)
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.9))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _class_plan(cfg: SynthConfig) -> list[str]:
    n_good = max(1, round(cfg.count * cfg.good_fraction))
    n_def = cfg.count - n_good
    labels = [GOOD] * n_good
    for i, cls in enumerate(cfg.classes):
        labels += [cls] * (n_def // len(cfg.classes) + (1 if i < n_def % len(cfg.classes) else 0))
    return labels


def _split_of(index_in_class: int, n_in_class: int) -> str:
    """Every split gets at least one image of every class."""
    n_train, n_val, _ = split_sizes(n_in_class)
    return "train" if index_in_class < n_train else "val" if index_in_class < n_train + n_val else "test"


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def generate(out: str | Path, cfg: SynthConfig, progress=None) -> dict:
    """Write OUT/{train,val,test}/<class>/*.png, OUT/masks/<class>/*.png and OUT/dataset.json."""
    validate(cfg)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TrainingError(f"{out} exists and is not empty; choose a new folder")
    labels = _class_plan(cfg)
    per_class = {c: labels.count(c) for c in dict.fromkeys(labels)}
    seen = dict.fromkeys(per_class, 0)
    files: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {s: dict.fromkeys(per_class, 0) for s in SPLIT_FRACTIONS}
    for i, cls in enumerate(labels):
        rng = np.random.default_rng([cfg.seed, i])
        img, mask = make_sample(rng, cfg.size, cls)
        split = _split_of(seen[cls], per_class[cls])
        seen[cls] += 1
        counts[split][cls] += 1
        stem = f"{cls}_{i:06d}"
        items = [(f"{split}/{cls}/{stem}.png", img)]
        if mask is not None:
            items.append((f"masks/{cls}/{stem}.png", mask))
        for rel, arr in items:
            data = _png(arr)
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            files[rel] = hashlib.sha256(data).hexdigest()
        if progress:
            progress(i + 1, len(labels))
    manifest = {
        "kind": "qc-synth",
        "generator": cfg.model_dump(),
        "classes": list(per_class),
        "good_class": GOOD,
        "counts": counts,
        "files": dict(sorted(files.items())),
    }
    (out / "dataset.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
