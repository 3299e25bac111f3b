"""MobileNet classifiers with preprocessing inside (the edge feeds raw 0..255 pixels) and a CAM twin.

Layer names are part of the contract with evaluation and export: `preprocess` (when the backbone has
none of its own), `backbone`, `pool`, `dropout`, `head` (linear), `probs` (softmax).
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from training.config import ARCHITECTURES
from training.errors import TrainingError

__all__ = ["build", "with_cam", "load"]


@keras.saving.register_keras_serializable(package="qc")
class Standardize(layers.Layer):
    """Per-image standardization: zero mean, unit variance over each image. Removes a part's overall
    brightness and contrast (lamp ageing, exposure), so the network spends itself on local defects.

    The mean and variance come from a grid of about 32 x 32 pixels: the same estimate for any size, and in
    the int8 model two reductions over the whole 224 x 224 image would cost more than the first conv.

    Written with operators the Edge TPU maps (its table has no strided slice with a stride above 1 and no
    MEAN over 3 channels): the grid is a 1 x 1 max pool with that stride (the same pixels), and the mean
    over the channels a sum over them divided by their number after a mean over the rows and columns."""

    def call(self, x):
        step = max(1, min(x.shape[1], x.shape[2]) // 32)
        grid = keras.ops.max_pool(x, 1, strides=step, padding="valid") if step > 1 else x

        def mean(t):
            return keras.ops.sum(keras.ops.mean(t, axis=(1, 2), keepdims=True), axis=3, keepdims=True) / t.shape[3]

        m = mean(grid)
        return (x - m) * keras.ops.rsqrt(mean(keras.ops.square(grid - m)) + 1.0)


def pretrained_weights(weights: str) -> bool:
    return weights != "none"


def _weights_arg(weights: str) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    if not Path(weights).is_file():
        raise TrainingError(f"--weights {weights}: not 'none', 'imagenet' or an existing weights file")
    return weights


def backbone_kwargs(arch: str) -> dict:
    """What a Keras applications backbone is built with beyond its size, width and weights (also by the
    tf-keras twin for quantization-aware training)."""
    kwargs = {} if arch == "mobilenet_v2" else {"include_preprocessing": True}  # V3 rescales 0..255 itself
    if ARCHITECTURES[arch].minimalistic:
        kwargs["minimalistic"] = True
    return kwargs


def build(arch: str, num_classes: int, input_size: int, alpha: float, weights: str = "none",
          dropout: float = 0.2, pooling: str = "avg") -> keras.Model:
    if arch not in ARCHITECTURES:
        raise TrainingError(f"unknown architecture '{arch}'; choose from {list(ARCHITECTURES)}")
    if input_size < 32:
        raise TrainingError(f"--input-size {input_size} is too small; MobileNet needs at least 32")
    kwargs = dict(input_shape=(input_size, input_size, 3), alpha=alpha, include_top=False,
                  weights=_weights_arg(weights), **backbone_kwargs(arch))
    try:
        base = getattr(keras.applications, ARCHITECTURES[arch].keras_name)(**kwargs)
    except ValueError as exc:  # e.g. no imagenet weights for this alpha / size
        raise TrainingError(f"cannot build {arch} alpha={alpha} size={input_size} weights={weights}: {exc}") from exc
    base.name = "backbone"
    pretrained = pretrained_weights(weights)
    if not pretrained:
        # Keras applications use BatchNorm momentum 0.99-0.999, tuned for ImageNet-length runs; from scratch
        # on a few thousand images the moving statistics would lag for many epochs and make validation noise.
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = 0.9
    inp = keras.Input((input_size, input_size, 3), name="image")
    x = inp
    if arch == "mobilenet_v2":  # V3 rescales 0..255 itself; pretrained weights expect -1..1
        x = (layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess") if pretrained
             else Standardize(name="preprocess"))(inp)
    # keras-io transfer learning: a pretrained backbone keeps BatchNorm in inference mode, also when fine-tuned
    features = base(x, training=False) if pretrained else base(x)
    # max pooling keeps a small defect's response whole; averaging dilutes it by the feature map's area
    pool = layers.GlobalMaxPooling2D if pooling == "max" else layers.GlobalAveragePooling2D
    pooled = pool(name="pool")(features)
    pooled = layers.Dropout(dropout, name="dropout")(pooled)
    logits = layers.Dense(num_classes, name="head")(pooled)
    probs = layers.Softmax(name="probs")(logits)
    return keras.Model(inp, probs, name=f"{arch}_{alpha}_{input_size}")


def with_cam(model: keras.Model, for_training: bool = False, pretrained: bool = True,
             logits: bool = False) -> keras.Model:
    """The same weights with a second output: per-location class probabilities (a class activation map).

    `logits` makes both outputs logits, as the box runs them: quantized, a softmax output
    moves in steps of 1/256, coarser than a reject threshold chosen for 99 % recall can be, while quantized
    logits keep a small defect score's relative precision; the edge applies the softmax to both. The map's
    head is then a 1x1 convolution carrying the classifier head's weights: the same arithmetic as the Dense
    head over every location, in operators the Edge TPU maps (a Dense layer on a 4-D tensor becomes a
    reshape whose shape is computed at run time).

    The head is linear: with average pooling the mean of the map's logits is exactly the classifier's
    logits; with max pooling the map shows where each feature's strongest response lies. `for_training`
    keeps dropout, and BatchNorm in training mode for a backbone trained from scratch, so the map can be
    supervised with defect masks while the classifier learns.
    """
    names = {layer.name for layer in model.layers}
    inp = keras.Input(model.input.shape[1:], name="image")
    x = model.get_layer("preprocess")(inp) if "preprocess" in names else inp
    backbone = model.get_layer("backbone")
    features = backbone(x) if for_training and not pretrained else backbone(x, training=False)
    head = model.get_layer("head")
    pooled = model.get_layer("pool")(features)
    if for_training:
        pooled = model.get_layer("dropout")(pooled)
    if logits:
        kernel, bias = head.get_weights()
        cam_head = layers.Conv2D(head.units, 1, name="cam_head")
        cam = cam_head(features)
        cam_head.set_weights([kernel[None, None], bias])
        return keras.Model(inp, [head(pooled), cam], name=model.name + "_edge")
    probs = layers.Softmax(name="probs")(head(pooled))
    cam = layers.Softmax(name="cam")(head(features))
    return keras.Model(inp, {"probs": probs, "cam": cam} if for_training else [probs, cam],
                       name=model.name + "_cam")


def load(run: Path) -> keras.Model:
    path = Path(run) / "model.keras"
    if not path.is_file():
        raise TrainingError(f"{run}: no trained model (expected {path}); run `qc train` first")
    return keras.models.load_model(path, compile=False)  # training compiles its own; the rest only predicts
