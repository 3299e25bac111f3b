"""Quantization-aware fine-tuning for `qc export --qat EPOCHS`.

Post-training quantization rounds every layer once, after the fact; on a small from-scratch model the
accumulated rounding costs 1-2 points of binary F1. Quantization-aware training lets the weights adapt to
it: fake-quantization nodes in the forward pass, a few epochs at a low rate, then the same converter.

The TensorFlow Model Optimization toolkit does this for Keras 2 (tf-keras) models only, so the trained Keras 3
model is rebuilt flat in tf-keras layer for layer (the same Keras applications backbone), its weights copied
across and its float outputs checked against the original before any fine-tuning. The per-image Standardize
layer and any layer the toolkit has no quantization recipe for stay float in training; the converter
calibrates them with the representative images like post-training quantization does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import numpy as np

from training import model as models
from training.config import ARCHITECTURES
from training.errors import TrainingError

__all__ = ["quantization_aware"]


def _import_toolkit():
    """tfmot and tf-keras, imported without leaving TF_USE_LEGACY_KERAS set for the Keras 3 code around."""
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as exc:
        raise TrainingError(f"--qat needs tf-keras and tensorflow-model-optimization ({exc}); "
                            "install them with `pip install -e '.[train]'`") from exc
    finally:
        if before is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = before
    return tfmot, tf_keras


def _weighted_layers(layers) -> list:
    return [layer for layer in layers if layer.weights]


def _twin(net, arch: str, alpha: float, tf_keras):
    """The Keras 3 classifier rebuilt in tf-keras, flat (tfmot refuses nested models), with its weights,
    and with the outputs of `models.with_cam(net, logits=True)`: [logits, per-location logits]."""
    k = tf_keras

    class Standardize(k.layers.Layer):
        call = models.Standardize.call  # the same keras.ops arithmetic, on tf tensors

    names = {layer.name for layer in net.layers}
    backbone = net.get_layer("backbone")
    size = net.input.shape[1]
    inp = k.Input((size, size, 3), name="image")
    x = inp
    if "preprocess" in names:
        pre = net.get_layer("preprocess")
        x = (Standardize(name="preprocess") if isinstance(pre, models.Standardize)
             else k.layers.Rescaling(pre.scale, offset=pre.offset, name="preprocess"))(inp)
    base = getattr(k.applications, ARCHITECTURES[arch].keras_name)(
        input_tensor=x, alpha=alpha, include_top=False, weights=None, **models.backbone_kwargs(arch))
    pool_cls = type(net.get_layer("pool")).__name__
    pooled = getattr(k.layers, pool_cls)(name="pool")(base.output)
    pooled = k.layers.Dropout(net.get_layer("dropout").rate, name="dropout")(pooled)
    units = net.get_layer("head").units
    # the map gets its own copy of the head: one layer called twice would share one output range between
    # the pooled logits and the much wider per-location ones, and coarsen the logits the decision rests on
    cam = k.layers.Conv2D(units, 1, name="cam_head")(base.output)  # a 1x1 convolution, as in with_cam
    twin = k.Model(inp, [k.layers.Dense(units, name="head")(pooled), cam], name=net.name + "_qat")

    source = _weighted_layers([sub for layer in net.layers
                               for sub in (layer.layers if layer is backbone else [layer])])
    target = _weighted_layers(layer for layer in twin.layers if layer.name != "cam_head")
    shapes = [[tuple(w.shape) for w in layer.weights] for layer in source]
    if shapes != [[tuple(w.shape) for w in layer.weights] for layer in target]:
        raise TrainingError(f"cannot rebuild {net.name} in tf-keras for quantization-aware training: its layers differ")
    for src, dst in zip(source, target):
        dst.set_weights([np.asarray(w) for w in src.weights])
    _copy_head(twin.get_layer("head"), twin.get_layer("cam_head"))
    return twin, Standardize


def _copy_head(head, cam_head) -> None:
    """The map's 1x1 convolution takes the Dense head's weights."""
    kernel, bias = head.get_weights()
    cam_head.set_weights([kernel[None, None], bias])


def quantization_aware(net, arch: str, alpha: float, train: tuple[np.ndarray, np.ndarray],
                       val: tuple[np.ndarray, np.ndarray], epochs: int, class_weight: dict[int, float] | None,
                       label_smoothing: float, learning_rate: float = 3e-5, batch_size: int = 32, seed: int = 0):
    """Fine-tune a fake-quantized twin of `net` for `epochs` and return it (a tf-keras model with the outputs
    of `models.with_cam(net, logits=True)`), ready for the int8 converter.

    BatchNorm runs in inference mode (its scale and offset still train): its statistics were settled by
    training, and re-estimating them through the fake-quantized convolutions in a few epochs only loses
    accuracy (measured: F1 0.87-0.91 against 0.98, on the synthetic benchmark)."""
    tfmot, k = _import_toolkit()
    qk = tfmot.quantization.keras
    k.utils.set_random_seed(seed)
    twin, standardize_cls = _twin(net, arch, alpha, k)
    probe = train[0][:8].astype(np.float32)
    want = models.with_cam(net, logits=True).predict(probe, verbose=0)[0]
    got = twin.predict(probe, verbose=0)[0]
    if not np.allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max())):
        raise TrainingError(f"the tf-keras twin of {net.name} computes different logits (max difference "
                            f"{np.abs(got - want).max():.3g}); quantization-aware training would start from another model")
    registry = qk.default_8bit.Default8BitQuantizeRegistry()
    # BatchNorm has no recipe of its own: the toolkit folds it into the convolution before it, as the converter does
    def annotate(layer):
        known = registry.supports(layer) or isinstance(layer, k.layers.BatchNormalization)
        return qk.quantize_annotate_layer(layer) if known else layer

    annotated = k.models.clone_model(twin, clone_function=annotate)
    with qk.quantize_scope({"Standardize": standardize_cls}):
        quantized = qk.quantize_apply(annotated)
    for layer in quantized.layers:
        if isinstance(getattr(layer, "layer", layer), k.layers.BatchNormalization):
            layer.trainable = False  # inference mode: the moving statistics stay as trained
    # the loss is on the logits only; the map runs along so that its fake-quantization ranges follow, and its
    # head takes the fine-tuned head's weights afterwards
    quantized.compile(k.optimizers.Adam(learning_rate),
                      [k.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing), None])
    n = int(net.get_layer("head").units)
    print(f"quantization-aware fine-tuning: {epochs} epochs at {learning_rate:g}, BatchNorm statistics fixed",
          file=sys.stderr)
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)  # "gradients do not exist" for the map's head: it has no loss, by design
    try:
        with contextlib.redirect_stdout(sys.stderr):  # one line per epoch; stdout is for results
            quantized.fit(train[0].astype(np.float32), np.eye(n)[train[1]], batch_size=batch_size, epochs=epochs,
                          validation_data=(val[0].astype(np.float32), np.eye(n)[val[1]]),
                          class_weight=class_weight, shuffle=True, verbose=2)
    finally:
        tf_log.setLevel(level)
    # the map follows the fine-tuned head; a quantize wrapper holds the kernel itself (the layer inside keeps
    # only the bias), so both are copied through the wrapper's variables
    head, cam_head = ({w.name.split("/")[-1].split(":")[0]: w for w in quantized.get_layer(name).weights}
                      for name in ("quant_head", "quant_cam_head"))
    kernel = head["kernel"].numpy()[None, None]
    cam_head["kernel"].assign(kernel)
    cam_head["bias"].assign(head["bias"])
    # its fake-quantization ranges too: symmetric, as the toolkit keeps a convolution's weight ranges (the
    # converter refuses a per-channel weight zero point other than 0)
    for name, sign in (("kernel_min", -1), ("kernel_max", 1)):
        target = cam_head[name]
        bound = np.abs(kernel).max(axis=(0, 1, 2)) if target.shape.rank else np.abs(kernel).max()
        target.assign(np.broadcast_to(sign * bound, target.shape))
    return quantized
