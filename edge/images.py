"""The one image decoder of the project: training reads its datasets and the box its folder frames with
it, so a file gives the same pixels on both sides (OpenCV; grayscale stays one channel, colour is BGR).

Before decoding, the header's dimensions are read (Pillow, which reads the header alone) and an image over
`max_pixels` is refused: a small file can hold a huge image (a 443 KB PNG of 20000 x 20000 pixels takes
2.5 GB and seconds to decode)."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from edge.errors import EdgeError

__all__ = ["IMAGE_EXTS", "MAX_PIXELS", "ImageError", "ImageTooLarge", "decode", "dimensions"]

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MAX_PIXELS = 50_000_000  # 8K by 6K; a frame above it is refused before it is decoded
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
Image.MAX_IMAGE_PIXELS = None  # Pillow only reads headers here; the limit is max_pixels, with its own message


class ImageError(EdgeError, ValueError):
    """Bytes that are not a whole image of a known format."""


class ImageTooLarge(ImageError):
    """An image whose header announces more pixels than allowed."""


def dimensions(buf: np.ndarray, origin: str) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding its pixels."""
    try:
        with Image.open(io.BytesIO(buf.tobytes())) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{origin}: cannot decode image (unknown format or damaged header: {exc})") from None


def decode(data: bytes | np.ndarray, origin: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> uint8 H x W (gray) or H x W x 3 (BGR); raises ImageError naming `origin`.

    16-bit images keep their top 8 bits; an alpha channel is dropped. A JPEG without its end marker is
    refused as truncated: the codec would return it with its missing rows filled in grey. An image over
    `max_pixels` is refused (ImageTooLarge) from its header, before any pixel is decoded."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise ImageError(f"{origin}: cannot decode image (empty file)")
    width, height = dimensions(buf, origin)
    if width * height > max_pixels:
        raise ImageTooLarge(f"{origin}: {width} x {height} pixels is over the {max_pixels:,} allowed "
                            "(source.max_pixels); not decoded")
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
