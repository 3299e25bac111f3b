"""tf.data input pipelines: cached, shuffled, batched, prefetched; augmentation for training only."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from keras import layers
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AugmentConfig", "augmenter", "make_dataset"]


class AugmentConfig(BaseModel):
    """Random augmentation applied to training batches only; 0 turns one off."""

    model_config = ConfigDict(extra="forbid")
    rotation: float = Field(0.05, ge=0, le=0.5, description="max rotation as a fraction of a full turn")
    translation: float = Field(0.05, ge=0, le=0.5, description="max shift as a fraction of the size")
    flip: bool = Field(True, description="random horizontal and vertical flips")
    zoom: float = Field(0.1, ge=0, le=0.5, description="max zoom in or out as a fraction")
    brightness: float = Field(0.1, ge=0, le=1, description="max brightness change as a fraction of 255")
    contrast: float = Field(0.1, ge=0, le=1, description="max contrast change as a fraction")


def augmenter(cfg: AugmentConfig, seed: int):
    """A Keras pipeline of random layers built from the config (None when all are off)."""
    steps = []
    if cfg.flip:
        steps.append(layers.RandomFlip("horizontal_and_vertical", seed=seed))
    if cfg.rotation:
        steps.append(layers.RandomRotation(cfg.rotation, fill_mode="reflect", seed=seed + 1))
    if cfg.translation:
        steps.append(layers.RandomTranslation(cfg.translation, cfg.translation, fill_mode="reflect", seed=seed + 2))
    if cfg.zoom:
        steps.append(layers.RandomZoom(cfg.zoom, fill_mode="reflect", seed=seed + 3))
    if cfg.brightness:
        steps.append(layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed + 4))
    if cfg.contrast:
        steps.append(layers.RandomContrast(cfg.contrast, seed=seed + 5))
    return tf.keras.Sequential(steps, name="augment") if steps else None


def make_dataset(x: np.ndarray, y: np.ndarray, batch: int, training: bool, seed: int = 0,
                 augment: AugmentConfig | None = None, sample_weight: np.ndarray | None = None) -> tf.data.Dataset:
    """Images (uint8) and labels -> float32 batches. Shuffling and augmentation only when training."""
    tensors = (x, y) if sample_weight is None else (x, y, sample_weight)
    ds = tf.data.Dataset.from_tensor_slices(tensors).cache()
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch)
    ds = ds.map(lambda xb, *rest: (tf.cast(xb, tf.float32), *rest), num_parallel_calls=tf.data.AUTOTUNE)
    aug = augmenter(augment, seed) if training and augment is not None else None
    if aug is not None:
        ds = ds.map(lambda xb, *rest: (tf.clip_by_value(aug(xb, training=True), 0, 255), *rest),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
