"""Tiles: a frame inspected as overlapping crops at its own resolution, so a defect a few pixels across keeps
them instead of being squeezed away by a resize to the model's input. The same code cuts tiles for training
and on the box; a frame's score is its worst tile's.
"""

from __future__ import annotations

import math

import numpy as np

from edge.decision import defect_scores

__all__ = ["corners", "cut", "starts", "to_frame", "worst"]


def starts(length: int, size: int, overlap: int) -> list[int]:
    """Where tiles of `size` start along an axis of `length` pixels: evenly spread from 0 to the far edge,
    neighbours sharing at least `overlap` pixels; one tile at 0 when the axis is no longer than a tile."""
    if not 0 <= overlap < size:
        raise ValueError(f"tile overlap {overlap} must be at least 0 and less than the tile size {size}")
    if length <= size:
        return [0]
    n = math.ceil((length - overlap) / (size - overlap))
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def corners(shape: tuple[int, int], size: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left (x, y) of every tile of a frame of shape (height, width), row by row."""
    return [(x, y) for y in starts(shape[0], size, overlap) for x in starts(shape[1], size, overlap)]


def cut(img: np.ndarray, size: int, overlap: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(tiles N x size x size [x C], their corners). A frame narrower or lower than a tile is padded by
    repeating its edge pixels, on the right and bottom, which `to_frame` clips boxes back from."""
    h, w = img.shape[:2]
    if h < size or w < size:
        pad = ((0, max(0, size - h)), (0, max(0, size - w))) + ((0, 0),) * (img.ndim - 2)
        img = np.pad(img, pad, mode="edge")
    at = corners((h, w), size, overlap)
    return np.stack([img[y:y + size, x:x + size] for x, y in at]), at


def to_frame(box: list[int], corner: tuple[int, int], shape: tuple[int, int],
             offset: tuple[int, int] = (0, 0)) -> list[int]:
    """A box [x, y, w, h] in a tile's pixels -> the frame's (shape (height, width) of the inspected area,
    shifted by the ROI `offset`), clipped to the area where the tile was padded."""
    x0, y0 = box[0] + corner[0], box[1] + corner[1]
    x1, y1 = min(shape[1], x0 + box[2]), min(shape[0], y0 + box[3])
    x0, y0 = min(x0, shape[1] - 1), min(y0, shape[0] - 1)
    return [x0 + offset[0], y0 + offset[1], max(1, x1 - x0), max(1, y1 - y0)]


def worst(probs: np.ndarray, owner: np.ndarray, n: int, good_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the class probabilities of its tile with the highest defect score, and that tile's index:
    `probs` holds one row per tile, `owner` the image (0..n-1) each tile was cut from."""
    scores = defect_scores(probs, good_index)
    pick = np.full(n, -1)
    for i in np.argsort(scores, kind="stable"):  # ascending: each image ends with its worst tile
        pick[owner[i]] = i
    if (pick < 0).any():
        raise ValueError(f"images {np.flatnonzero(pick < 0)[:5].tolist()} have no tile")
    return probs[pick], pick
