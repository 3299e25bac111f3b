"""Good-only training: defects painted on the user's own good photos, so that a classifier learns what is not
this surface before any real defect has been seen.

Two kinds of painter, each returning the painted view and its mask (for the activation map's loss):
- the synthetic generator's defects (scratch, spot, crack, stain), their contrast scaled to the photo's;
- cut-and-paste (CutPaste, Li et al., CVPR 2021): a patch or a thin scar of the same photo, taken from another
  place, its brightness jittered, pasted over.

Painting happens in memory, on training views only: nothing is written into the dataset. No TensorFlow here.
"""

from __future__ import annotations

import cv2
import numpy as np

from training import synth
from training.config import DEFECT_LABEL, PAINTERS

__all__ = ["DEFECT_LABEL", "PAINTERS", "Painter", "paint", "with_painted"]

TYPICAL_STD = 15.0  # gray levels of texture the synthetic contrasts were set for; a photo's own scales them


def _cutpaste(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    centre = (float(rng.uniform(0.15 * w, 0.85 * w)), float(rng.uniform(0.15 * h, 0.85 * h)))
    if rng.random() < 0.5:  # a patch: 2-15 % of the view, aspect 0.3-3.3
        area = rng.uniform(0.02, 0.15) * h * w
        aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(3.3))))
        size = (float(np.sqrt(area * aspect)), float(np.sqrt(area / aspect)))
    else:  # a scar: 2-16 by 10-25 px at 256 px, at any angle
        s = max(h, w) / 256
        size = (float(rng.uniform(2, 16) * s + 1), float(rng.uniform(10, 25) * s + 2))
    box = cv2.boxPoints((centre, size, float(rng.uniform(0, 180))))
    cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 255)
    shift = np.float32([[1, 0, rng.uniform(-0.5, 0.5) * w], [0, 1, rng.uniform(-0.5, 0.5) * h]])
    source = cv2.warpAffine(img, shift, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    source = source.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-12, 12)
    out = img.astype(np.float32)
    out[mask > 0] = source[mask > 0]
    return out, mask


def paint(rng: np.random.Generator, img: np.ndarray, painter: str) -> tuple[np.ndarray, np.ndarray]:
    """One defect painted on a square RGB view (uint8): (the painted view, its mask as bool)."""
    if painter == "cutpaste":
        out, mask = _cutpaste(rng, img)
    else:
        mask, delta = synth.defect(rng, img.shape[0], painter)
        contrast = float(np.clip(img.std() / TYPICAL_STD, 0.4, 1.5))
        out = img.astype(np.float32) + contrast * delta[..., None]
    return np.clip(out, 0, 255).astype(np.uint8), mask > 0


class Painter:
    """Paints a defect on a share of the good views it is given, a new one each time (training batches)."""

    def __init__(self, painters: list[str], seed: int, share: float = 0.5):
        unknown = sorted(set(painters) - set(PAINTERS))
        if unknown or not painters:
            raise ValueError(f"painters {unknown or painters} not known; choose from {list(PAINTERS)}")
        self.painters, self.share = list(painters), share
        self.rng = np.random.default_rng([seed, 29])

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        if self.rng.random() >= self.share:
            return img, np.zeros(img.shape[:2], bool), False
        out, mask = paint(self.rng, img, self.painters[int(self.rng.integers(len(self.painters)))])
        return out, mask, True


def with_painted(views, painters: list[str], seed: int, defect_index: int):
    """The good views of a split (data.Views) and a painted copy of each, labelled `defect_index`: a fixed
    set (seeded) for validation loss and for checking a model when a split has no real defects. The copies
    are new photos (their own owner index), so each is decided on its own, as on the box."""
    from training.data import Views

    rng = np.random.default_rng([seed, 2029])
    good = np.flatnonzero(views.y != defect_index)
    x = views.x[good].copy()
    masks = np.zeros(x.shape[:3], bool)
    for i in range(len(x)):
        x[i], masks[i] = paint(rng, x[i], painters[i % len(painters)])
    n_photos = len(views.labels)
    owner = views.owner[good]
    photos = np.unique(owner)  # each good photo's painted copy is one new photo, all of its views painted
    new_owner = n_photos + np.searchsorted(photos, owner)
    base_masks = views.masks if views.masks is not None else np.zeros(views.x.shape[:3], bool)
    return Views(np.concatenate([views.x, x]), np.concatenate([views.y, np.full(len(x), defect_index)]),
                 np.concatenate([base_masks, masks]), np.concatenate([views.has_mask, np.ones(len(x), bool)]),
                 np.concatenate([views.owner, new_owner]),
                 np.concatenate([views.labels, np.full(len(photos), defect_index)]))
