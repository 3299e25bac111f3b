"""What `qc train` chooses from the data when its flag is not given: whole photos or tiles, the input size,
the shifts, and the epochs that make the run's optimizer steps. Each choice is printed with its reason at the
start of a run and saved in RUN/config.json; each has a flag that overrides it. No TensorFlow here.

The figures behind each constant are in docs/benchmarks.md and docs/experiments.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.bundle import Tiling
from edge.decision import GOOD
from training import data
from training.config import PLATEAU_PATIENCE, TrainConfig
from training.errors import TrainingError

__all__ = ["INPUT_SIZE", "MIN_DEFECT_PIXELS", "Plan", "choose", "defect_sizes", "oversample", "run_tiling",
           "schedule"]

INPUT_SIZE = 96  # twice the steps of 128 px in the same time; on tiles, 96 px of the photo
# the smallest defects (this percentile of the masks' sizes) must keep this many pixels at the input, or the model
# inspects tiles: the magnetic tiles' blowholes kept 2-4 px of their 7-20 in a photo resized to 96 px
MIN_DEFECT_PIXELS = 6
SMALL_DEFECT_PERCENTILE = 10
TILE_OVERLAP = 0.25  # share of a tile its neighbours overlap: a defect up to a quarter tile wide is whole in one
SHIFT = {"whole": 0.2, "tiles": 0.05}  # a tile is a crop already: a large shift moves its defect out of it
# on tiles most are good (about 1 in 12 on the magnetic tiles): defect tiles are repeated (each repeat augmented
# afresh) until they make this share of the training tiles, so that every step sees several
DEFECT_TILE_SHARE = 1 / 3


@dataclass
class Plan:
    cfg: TrainConfig  # with the input size and the shifts filled in
    tiling: Tiling | None
    reasons: list[str]


def defect_sizes(ds: data.Dataset, split: str = "train") -> np.ndarray:
    """Per defect image with a non-empty mask: (longer side of its largest defect, longer side of the photo)."""
    rows = []
    for it in ds.split(split):
        if it.label == GOOD or it.mask is None:
            continue
        m = data.read_rgb(it.mask)[..., 0] > 127
        n, _, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8))
        if n > 1:
            rows.append((int(stats[1:, 2:4].max()), max(m.shape)))
    return np.array(rows, float).reshape(-1, 2)


def _photo_size(ds: data.Dataset) -> tuple[int, int]:
    sizes = list(ds.sizes.elements())
    if not sizes:
        return 0, 0
    return int(np.median([w for w, _h, _c in sizes])), int(np.median([h for _w, h, _c in sizes]))


def choose(ds: data.Dataset, cfg: TrainConfig) -> Plan:
    """Whole photos or tiles, and the input size and shifts that go with them."""
    size = cfg.input_size or INPUT_SIZE
    n_train = len(ds.split("train"))
    w, h = _photo_size(ds)
    reasons = [f"{n_train} training images of about {w} x {h} px"]
    sizes = defect_sizes(ds)
    if cfg.min_defect_px:
        smallest, photo = float(cfg.min_defect_px), float(max(w, h))
        said = f"defects from {cfg.min_defect_px} px (--min-defect-px)"
    elif len(sizes):
        smallest = float(np.percentile(sizes[:, 0], SMALL_DEFECT_PERCENTILE))
        photo = float(np.median(sizes[:, 1]))
        said = f"defects from {smallest:.0f} px ({SMALL_DEFECT_PERCENTILE}th percentile of {len(sizes)} masks)"
    else:
        smallest = photo = None
        said = "no defect masks and no --min-defect-px to say how small defects are"
    kept = smallest * size / photo if smallest else None
    if cfg.tiles == "auto":
        tile = kept is not None and kept < MIN_DEFECT_PIXELS and photo > size
        why = (f"{said}, which keep {kept:.1f} px in a photo resized to {size} px" if kept else said)
        why += (f" (fewer than {MIN_DEFECT_PIXELS}): the model inspects {size} px tiles at the photos' resolution"
                if tile else ": the model inspects whole photos resized to "
                f"{size} px" + (f" (smallest defects keep at least {MIN_DEFECT_PIXELS} px)" if kept else ""))
    else:
        tile = cfg.tiles == "on"
        why = f"{said}; --tiles {cfg.tiles}: " + (f"{size} px tiles at the photos' resolution" if tile
                                                   else f"whole photos resized to {size} px")
    if tile and not len(sizes) and not cfg.good_only:  # good-only: every tile of a good photo is good
        raise TrainingError("tiles need defect masks (masks/<class>/<image>.png) to say which tiles hold the defect")
    tiling = Tiling(size=size, overlap=round(size * TILE_OVERLAP)) if tile else None
    if tiling:
        why += f", {tiling.overlap} px overlap"
    reasons[0] += f"; {why}"
    shift = cfg.augment.translation
    if shift is None:
        shift = SHIFT["tiles" if tile else "whole"]
        reasons.append(f"shifts up to {shift:.0%} of the {'tile' if tile else 'photo'} (--translation)")
    cfg = cfg.model_copy(update={"input_size": size,
                                 "augment": cfg.augment.model_copy(update={"translation": shift})})
    if cfg.good_only:
        reasons.append(f"good-only: a defect ({', '.join(cfg.painters)}) painted on half the training "
                       f"{'tiles' if tile else 'photos'}, a new one each epoch; the threshold rejects "
                       f"{cfg.max_false_rejects:.1%} of the good validation photos (--max-false-rejects)")
    reasons.append(f"backbone {cfg.arch} {cfg.alpha} (--arch): the best of those measured on the synthetic set and "
                   "the magnetic tiles, and the Edge TPU runs it whole")
    return Plan(cfg, tiling, reasons)


def oversample(views: data.Views, good: int) -> tuple[data.Views, str | None]:
    """Training tiles with the defect tiles repeated up to DEFECT_TILE_SHARE, and what was done."""
    defect = np.flatnonzero(views.y != good)
    n_good = len(views.y) - len(defect)
    if not len(defect) or len(defect) >= DEFECT_TILE_SHARE * len(views.y):
        return views, None
    times = math.ceil(DEFECT_TILE_SHARE * n_good / ((1 - DEFECT_TILE_SHARE) * len(defect)))
    pick = np.concatenate([np.arange(len(views.y))] + [defect] * (times - 1))
    said = f"the {len(defect)} defect tiles taken {times} times, against {n_good} good ones"
    return views.take(pick), said


def schedule(cfg: TrainConfig, n_examples: int, what: str) -> tuple[TrainConfig, str]:
    """The epochs that make `cfg.steps` optimizer steps over n examples (unless --epochs), and the patience."""
    per_epoch = cfg.steps_per_epoch or math.ceil(n_examples / cfg.batch_size)
    epochs = cfg.epochs or max(1, math.ceil(cfg.steps / per_epoch))
    patience = cfg.patience or (epochs if cfg.lr_schedule == "cosine" else PLATEAU_PATIENCE)
    said = (f"{epochs} epochs (--epochs)" if cfg.epochs else
            f"{cfg.steps} steps (--steps) of {cfg.batch_size} = {epochs} epochs")
    return cfg.model_copy(update={"epochs": epochs, "patience": patience}), f"{said} of {n_examples} {what}"


def run_tiling(record: dict) -> Tiling | None:
    """The tiling a run was trained with (RUN/config.json), None for whole photos and older runs."""
    return Tiling.model_validate(record["tiling"]) if record.get("tiling") else None
