"""tf.data input pipelines: cached, shuffled, batched, prefetched; augmentation for training only."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from training.config import AugmentConfig

__all__ = ["augmenters", "cam_targets", "make_dataset"]


def augmenters(cfg: AugmentConfig, seed: int):
    """(geometric, photometric) Keras pipelines built from the config (None where all are off).

    Geometric layers run on the image and its defect mask together, so the mask follows the image."""
    geo, photo = [], []
    if cfg.flip:
        geo.append(layers.RandomFlip("horizontal_and_vertical", seed=seed))
    if cfg.rotation:
        geo.append(layers.RandomRotation(cfg.rotation, fill_mode="reflect", seed=seed + 1))
    if cfg.translation:
        geo.append(layers.RandomTranslation(cfg.translation, cfg.translation, fill_mode="reflect", seed=seed + 2))
    if cfg.zoom:
        geo.append(layers.RandomZoom(cfg.zoom, fill_mode="reflect", seed=seed + 3))
    if cfg.brightness:
        photo.append(layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed + 4))
    if cfg.contrast:
        photo.append(layers.RandomContrast(cfg.contrast, seed=seed + 5))
    return (keras.Sequential(geo, name="geometric") if geo else None,
            keras.Sequential(photo, name="photometric") if photo else None)


def cam_targets(masks: tf.Tensor, labels: tf.Tensor, has_mask: tf.Tensor, grid: int, good_index: int) -> tf.Tensor:
    """Per-cell class targets for the activation map: the image's class where its mask covers a cell,
    `good` elsewhere; -1 (ignored) everywhere on defect images that have no mask."""
    size = masks.shape[1]
    cells = tf.nn.max_pool2d(masks, ksize=size // grid, strides=size // grid, padding="VALID")[..., 0]
    target = tf.where(cells > 0.25, tf.cast(labels, tf.int32)[:, None, None], good_index)
    unknown = tf.logical_and(tf.logical_not(has_mask), labels != good_index)[:, None, None]
    return tf.where(unknown, -1, target)


def make_dataset(x: np.ndarray, y: np.ndarray, batch: int, training: bool, seed: int = 0,
                 augment: AugmentConfig | None = None, masks: np.ndarray | None = None,
                 has_mask: np.ndarray | None = None, grid: int | None = None,
                 class_weights: dict[int, float] | None = None, *, good_index: int,
                 painter=None, defect_index: int | None = None) -> tf.data.Dataset:
    """Images (uint8) and labels -> float32 batches; shuffled and augmented only when training.

    With `grid`, the targets are {"probs": label, "cam": per-cell labels from the masks} for
    mask-supervised activation maps; with `class_weights`, per-sample weights for the class output; with a
    `painter` (training.goodonly.Painter), the images it paints a defect on become `defect_index` with its mask,
    new ones each epoch."""
    n = len(x)
    masks = np.zeros(x.shape[:3], np.uint8) if masks is None else masks.astype(np.uint8)
    has_mask = np.zeros(n, bool) if has_mask is None else has_mask
    ds = tf.data.Dataset.from_tensor_slices((x, y, masks, has_mask)).cache()
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if painter is not None:
        def paint(xi, yi, mi, hi):
            out, mask, painted = painter(xi)
            return out, np.int64(defect_index if painted else yi), mask.astype(np.uint8), np.bool_(painted or hi)

        def painted(*element):  # in order, one at a time: the painter's random sequence is the same every run
            out = tf.numpy_function(paint, list(element), [tf.uint8, tf.int64, tf.uint8, tf.bool], stateful=True)
            for t, ref in zip(out, element):
                t.set_shape(ref.shape)
            return tuple(out)

        ds = ds.map(painted)
    ds = ds.batch(batch)
    geo, photo = augmenters(augment, seed) if training and augment is not None else (None, None)
    weights = tf.constant([class_weights.get(i, 1.0) for i in range(max(class_weights) + 1)]) if class_weights else None

    def prepare(xb, yb, mb, hb):
        xb, mb = tf.cast(xb, tf.float32), tf.cast(mb, tf.float32)[..., None]
        if geo is not None:
            both = geo(tf.concat([xb, 255.0 * mb], axis=-1), training=True)
            xb, mb = both[..., :3], both[..., 3:] / 255.0
        if photo is not None:
            xb = tf.clip_by_value(photo(xb, training=True), 0, 255)
        targets = yb if grid is None else {"probs": yb, "cam": cam_targets(mb, yb, hb, grid, good_index)}
        if weights is None:
            return xb, targets
        w = tf.gather(weights, yb)
        return xb, targets, (w if grid is None else {"probs": w, "cam": tf.ones_like(w)})

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
