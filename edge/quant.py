"""Quantization math for int8/uint8 tensors, as small pure functions (after pycoral's adapters)."""

from __future__ import annotations

import numpy as np

__all__ = ["quantize", "dequantize"]


def quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Real values (here: raw 0..255 pixels) -> the input tensor's dtype. A uint8 tensor with scale 1 and
    zero point 0 takes uint8 pixels as they are, without a copy."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    if x.dtype == dtype and scale == 1.0 and zero_point == 0:
        return x
    info = np.iinfo(dtype)
    q = np.round(x.astype(np.float32) / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """A quantized output tensor -> float32 values; float tensors pass through."""
    if q.dtype.kind == "f":
        return q.astype(np.float32, copy=False)
    return (scale * (q.astype(np.int64) - zero_point)).astype(np.float32)
