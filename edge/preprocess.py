"""Frame preprocessing shared by training and the edge: colour to RGB, ROI crop, resize.

Training imports these so that the camera box prepares pixels exactly as the model saw them.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["RESIZE_METHODS", "to_rgb", "crop", "resize", "prepare"]

RESIZE_METHODS = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def to_rgb(img: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Any 8-bit image (gray, gray+1, BGR/RGB, BGRA/RGBA) as H x W x 3 RGB."""
    if img.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, got dtype {img.dtype}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        code = {(3, True): cv2.COLOR_BGR2RGB, (4, True): cv2.COLOR_BGRA2RGB, (4, False): cv2.COLOR_RGBA2RGB}
        return cv2.cvtColor(img, code[(img.shape[2], bgr)]) if (img.shape[2], bgr) in code else img
    raise ValueError(f"unsupported image shape {img.shape}")


def crop(img: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """Crop to roi = (x, y, w, h) in pixels; a view, no copy."""
    if roi is None:
        return img
    x, y, w, h = roi
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > img.shape[1] or y + h > img.shape[0]:
        raise ValueError(f"roi {roi} lies outside the {img.shape[1]}x{img.shape[0]} frame")
    return img[y : y + h, x : x + w]


def resize(img: np.ndarray, size: tuple[int, int], method: str = "area") -> np.ndarray:
    """Resize to (height, width) with a named method (the bundle's `input.resize`)."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    return cv2.resize(img, (w, h), interpolation=RESIZE_METHODS[method])


def prepare(img: np.ndarray, size: tuple[int, int], method: str = "area", bgr: bool = False,
            roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """ROI crop, then resize, then RGB: the model's raw uint8 input (H x W x 3)."""
    return to_rgb(resize(crop(img, roi), size, method), bgr=bgr)
