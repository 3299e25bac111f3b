"""Defect localization from the model's class activation map (its second output).

The map holds per-location class probabilities; the defect map is 1 - p(good) at each location.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.decision import defect_scores

__all__ = ["defect_map", "box"]


def defect_map(cam: np.ndarray, good_index: int) -> np.ndarray:
    """(h, w, classes) or (1, h, w, classes) probabilities -> (h, w) defect probability."""
    return defect_scores(cam.reshape(cam.shape[-3:]).astype(np.float32), good_index)


def _upsample(dmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(dmap.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def box(dmap: np.ndarray, shape: tuple[int, int], level: float = 0.5,
        offset: tuple[int, int] = (0, 0), upsample: int = 8) -> list[int] | None:
    """Bounding box [x, y, w, h] (in a frame of `shape`, shifted by the ROI `offset`) of the connected
    region around the peak where the map is at least `level` of its peak; None when the map is flat.

    Worked out on the map upsampled `upsample` times, not at frame size: the map holds no finer detail,
    and a 640x480 connected-components pass would cost more than the model."""
    if float(dmap.max()) <= 0:
        return None
    h, w = dmap.shape
    up = _upsample(dmap, (h * upsample, w * upsample))
    iy, ix = np.unravel_index(int(np.argmax(dmap)), dmap.shape)
    py, px = iy * upsample + upsample // 2, ix * upsample + upsample // 2
    hot = (up >= level * up[py, px]).astype(np.uint8)
    _, labels = cv2.connectedComponents(hot)
    ys, xs = np.nonzero(labels == labels[py, px])
    sy, sx = shape[0] / up.shape[0], shape[1] / up.shape[1]
    x0, y0 = int(xs.min() * sx), int(ys.min() * sy)
    x1, y1 = min(shape[1], int(np.ceil((xs.max() + 1) * sx))), min(shape[0], int(np.ceil((ys.max() + 1) * sy)))
    return [x0 + offset[0], y0 + offset[1], x1 - x0, y1 - y0]
