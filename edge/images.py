"""The one image decoder of the project: training reads its datasets and the box its folder frames with
it, so a file gives the same pixels on both sides (OpenCV; grayscale stays one channel, colour is BGR)."""

from __future__ import annotations

import cv2
import numpy as np

from edge.errors import EdgeError

__all__ = ["IMAGE_EXTS", "ImageError", "decode"]

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


class ImageError(EdgeError, ValueError):
    """Bytes that are not a whole image of a known format."""


def decode(data: bytes | np.ndarray, origin: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> uint8 H x W (gray) or H x W x 3 (BGR); raises ImageError naming `origin`.

    16-bit images keep their top 8 bits; an alpha channel is dropped. A JPEG without its end marker is
    refused as truncated: the codec would return it with its missing rows filled in grey."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise ImageError(f"{origin}: cannot decode image (empty file)")
    head = buf[:2].tobytes()
    if head == _JPEG_START and _JPEG_END not in buf[-1024:].tobytes():
        raise ImageError(f"{origin}: cannot decode image (truncated JPEG: no end marker)")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{origin}: cannot decode image (unknown format or damaged data)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"{origin}: {img.dtype} pixels are not supported (8 or 16 bits per channel)")
    if img.ndim == 3:
        channels = img.shape[2]
        img = img[..., 0] if channels == 1 or channels == 2 else img[..., :3]
        img = np.ascontiguousarray(img)
    return img
