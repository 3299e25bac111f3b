"""Every setting of the workstation side, as pydantic models with their defaults written once: `qc train`,
`qc synth` and `qc export` generate their flags and help from these. No TensorFlow here, so the CLI parses
and `qc --help` answers on a machine without it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field, model_validator

from firmware_io.settings import Strict

__all__ = ["ARCHITECTURES", "DEFECTS", "DEFECT_LABEL", "FALSE_REJECT_BUDGET", "PAINTERS", "PLATEAU_PATIENCE",
           "TARGET_RECALL",
           "AugmentConfig", "ExportConfig", "SynthConfig", "TrainConfig"]


class Backbone(NamedTuple):
    keras_name: str  # the class in keras.applications
    default_alpha: float  # Keras's own width for MobileNetV3 (its ImageNet weights exist for it); V2 at 0.35
    # trains as fast as V3-Small at 1.0
    minimalistic: bool = False  # MobileNetV3 without hard-swish, squeeze-and-excite and 5x5 kernels: the
    # variant the Edge TPU runs whole (it has no hard-swish)


ARCHITECTURES = {
    "mobilenet_v2": Backbone("MobileNetV2", 0.35),
    "mobilenet_v3_small": Backbone("MobileNetV3Small", 1.0),
    "mobilenet_v3_small_minimalistic": Backbone("MobileNetV3Small", 1.0, minimalistic=True),
    "mobilenet_v3_large": Backbone("MobileNetV3Large", 1.0),
}
Arch = Literal[tuple(ARCHITECTURES)]
PLATEAU_PATIENCE = 8
TARGET_RECALL = 0.99  # the defect recall a reject threshold is chosen for, on the validation split
FALSE_REJECT_BUDGET = 0.02  # the share of good parts a threshold may reject to catch more defects
DEFECTS = ("scratch", "spot", "crack", "stain")  # what the synthetic generator paints
PAINTERS = (*DEFECTS, "cutpaste")  # what good-only training paints on good photos (training/goodonly.py)
DEFECT_LABEL = "defect"  # a good-only model's one defect class


class AugmentConfig(Strict):
    """Random augmentation applied to training batches only; 0 turns one off."""

    rotation: float = Field(0.05, ge=0, le=0.5, description="max rotation as a fraction of a full turn")
    translation: float | None = Field(None, ge=0, le=0.5, description="max random shift as a fraction of the size "
                                      "(default: chosen from the data by `qc train`, see training/recipe.py)")
    flip: bool = Field(True, description="random horizontal and vertical flips")
    zoom: float = Field(0.1, ge=0, le=0.5, description="max zoom in or out as a fraction")
    brightness: float = Field(0.1, ge=0, le=1, description="max brightness change as a fraction of 255")
    contrast: float = Field(0.1, ge=0, le=1, description="max contrast change as a fraction")


class TrainConfig(Strict):
    """Every setting of a training run; saved in RUN/config.json."""

    data: Path = Field(description="dataset folder (see `qc data`)")
    out: Path = Field(description="new run folder")
    arch: Arch = Field("mobilenet_v3_small_minimalistic", description="backbone from Keras applications")
    alpha: float | None = Field(None, gt=0, le=1.4, description="width multiplier of the backbone (default: "
                                + ", ".join(f"{b.default_alpha} for {a}" for a, b in ARCHITECTURES.items()) + ")")
    input_size: int | None = Field(None, ge=32, le=512, description="square model input side in pixels, and the tile "
                                   "side when tiling (default: chosen from the data)")
    weights: str = Field("none", description="none (from scratch), imagenet, or a local weights file")
    steps: int = Field(3600, ge=1, description="optimizer steps of the whole run; the epochs follow from the "
                       "dataset's size (at batch 32, 3600 steps are 55 epochs of 2,100 images, 120 of 939)")
    epochs: int | None = Field(None, ge=1, description="epochs instead of --steps")
    tiles: Literal["auto", "on", "off"] = Field("auto", description="inspect overlapping tiles at the photos' own "
                                                "resolution; auto: when the smallest defects would lose their pixels "
                                                "in a photo resized to the input")
    min_defect_px: int | None = Field(None, ge=1, description="the smallest defect's size in photo pixels (default: "
                                      "measured on the defect masks)")
    head_epochs: int = Field(5, ge=0, description="with pretrained weights: epochs with the backbone frozen")
    batch_size: int = Field(32, ge=1, description="images per step")
    optimizer: Literal["adam", "sgd", "rmsprop"] = Field("adam", description="optimizer")
    learning_rate: float = Field(2e-3, gt=0, description="initial rate (see lr_schedule)")
    fine_tune_learning_rate: float = Field(1e-4, gt=0, description="after unfreezing a pretrained backbone, "
                                           "and with --init-from")
    momentum: float = Field(0.9, ge=0, lt=1, description="for sgd")
    weight_decay: float = Field(1e-4, ge=0, description="decoupled L2 weight decay in the optimizer")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout before the classifier head")
    pooling: Literal["max", "avg"] = Field("avg", description="global pooling of the backbone's features (max "
                                           "can help with tiny defects)")
    class_weights: bool = Field(True, description="weight classes by their inverse frequency")
    mask_supervision: float = Field(1.0, ge=0, description="weight of the activation-map loss on images with "
                                    "defect masks (0: image labels only)")
    patience: int | None = Field(None, ge=1, description="early stopping patience on val loss in epochs (default: "
                                 f"the whole run with cosine, which must anneal to its end; {PLATEAU_PATIENCE} with "
                                 "plateau). The epoch of lowest val loss is kept either way")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="share of each label spread over all classes: "
                                   "less overconfident scores, so a hard defect is less often scored near 0")
    lr_schedule: Literal["plateau", "cosine"] = Field(
        "cosine", description="cosine: decay the rate to zero over the epochs; plateau: cut it when val loss stalls")
    steps_per_epoch: int | None = Field(None, ge=1, description="cap batches per epoch (quick runs)")
    seed: int = Field(0, description="seed of the split, the initial weights and the augmentation")
    skip_bad: bool = Field(False, description="skip unreadable images instead of failing")
    init_from: Path | None = Field(None, description="continue from an earlier run's model (retrain with new labels); "
                                   "from a --good-only run onto labelled data: its backbone, with a new head")
    good_only: bool = Field(False, description="learn from good photos only: defects are painted on them during "
                            f"training, the model's classes are good and {DEFECT_LABEL}, and the reject threshold "
                            "comes from the good validation photos and --max-false-rejects (defect photos in the "
                            "train and val splits are left out; the test split's are kept for `qc evaluate`)")
    painters: list[Literal[PAINTERS]] = Field(list(PAINTERS), min_length=1,
                                              description="with --good-only: the defects painted on good photos")
    max_false_rejects: float = Field(FALSE_REJECT_BUDGET, gt=0, lt=1, description="share of good parts the reject "
                                     "threshold may reject: with --good-only its good validation scores' quantile; "
                                     "otherwise spent to catch more defects than the target recall's fit")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="augmentation (a --config file's "
                                   "`augment:` section)")

    @model_validator(mode="after")
    def _resolve_defaults(self):
        if self.alpha is None:
            self.alpha = ARCHITECTURES[self.arch].default_alpha
        return self


class SynthConfig(Strict):
    """The synthetic dataset's settings; checked by `generate` (`validate`), which names the flag at fault."""

    count: int = Field(1000, description="number of images in all")
    seed: int = Field(0, description="the same seed gives byte-identical output")
    size: int = Field(128, description="image side in pixels (at least 32)")
    classes: list[str] = Field(default_factory=lambda: list(DEFECTS),
                               description=f"defect classes to make (default all: {' '.join(DEFECTS)})")
    good_fraction: float = Field(0.5, description="share of defect-free parts")


class ExportConfig(Strict):
    """How `qc export` quantizes, checks and writes a bundle."""

    mode: Literal["int8", "float16", "float32"] = Field("int8", description="int8: full-integer quantization")
    io: Literal["uint8", "int8"] = Field("uint8", description="int8 model input/output type")
    representative: int = Field(200, ge=1, description="calibration images from the train split")
    per_tensor: bool = Field(False, description="one scale per weight tensor instead of per channel: a smaller "
                             "file, checked for accuracy")
    qat: int = Field(0, ge=0, description="quantization-aware fine-tuning for this many epochs before converting "
                     "(0: post-training quantization only); recovers the F1 that int8 rounding costs a small model")
    data: Path | None = Field(None, description="dataset (default: the one the run was trained on)")
    max_drop: float = Field(0.01, description="largest allowed loss of binary F1 or recall")
    allow_drop: bool = Field(False, description="export even when the quantized model loses more")
    edgetpu: bool = Field(False, description="refuse a model the Edge TPU would not run whole (its operator "
                          "table, static shapes) and run edgetpu_compiler when it is on PATH")
    allow_cpu_ops: bool = Field(False, description="with --edgetpu: export even when some operators would run "
                                "on the CPU (they are listed in the bundle's notes)")
    force: bool = Field(False, description="replace an existing bundle folder")
