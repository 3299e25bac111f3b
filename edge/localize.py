"""Defect localization from the model's class activation map (its second output).

The map holds per-location class probabilities; the defect map is 1 - p(good) at each location.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["defect_map", "peak", "box"]


def defect_map(cam: np.ndarray, good_index: int = 0) -> np.ndarray:
    """(h, w, classes) or (1, h, w, classes) probabilities -> (h, w) defect probability."""
    cam = cam.reshape(cam.shape[-3:])
    return 1.0 - cam[..., good_index].astype(np.float32)


def _upsample(dmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(dmap.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def peak(dmap: np.ndarray, shape: tuple[int, int]) -> tuple[int, int]:
    """(x, y) of the map's maximum in an image of `shape` (height, width)."""
    h, w = dmap.shape
    iy, ix = np.unravel_index(int(np.argmax(dmap)), dmap.shape)
    return min(shape[1] - 1, int((ix + 0.5) * shape[1] / w)), min(shape[0] - 1, int((iy + 0.5) * shape[0] / h))


def box(dmap: np.ndarray, shape: tuple[int, int], level: float = 0.5,
        offset: tuple[int, int] = (0, 0)) -> list[int] | None:
    """Bounding box [x, y, w, h] (in a frame of `shape`, shifted by the ROI `offset`) of the connected
    region around the peak where the map is at least `level` of its peak; None when the map is flat."""
    if float(dmap.max()) <= 0:
        return None
    up = _upsample(dmap, shape)
    px, py = peak(dmap, shape)
    hot = (up >= level * up[py, px]).astype(np.uint8)
    _, labels = cv2.connectedComponents(hot)
    ys, xs = np.nonzero(labels == labels[py, px])
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0 + offset[0], y0 + offset[1], int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
