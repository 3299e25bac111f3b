"""`qc train`: fit a MobileNet classifier on a folder dataset, one progress line per epoch.

Writes RUN/model.keras, RUN/history.json, RUN/training-curves.png and RUN/config.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import tensorflow as tf
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.errors import QCError
from training import data, plots
from training import model as models
from training.pipeline import AugmentConfig, make_dataset

__all__ = ["SMALL_DATASET_RECIPE", "TrainConfig", "train"]

# A few hundred photos make ~30 steps an epoch, too few in the default 55 epochs: on the magnetic tiles (128 px,
# where their smallest defects keep 4-8 px) 100 epochs reached accuracy 0.93-0.955 and 150 reached 0.95-0.98,
# with MobileNetV2 (MobileNetV3-Small, the default, reached 0.931 where V2 reached 0.950).
# Shifts stay at 5 %: at 20 % (the default) the tiles' accuracy fell from 0.950 to 0.817.
SMALL_DATASET_RECIPE = {"arch": "mobilenet_v2", "epochs": 150, "input_size": 128, "augment": {"translation": 0.05}}
PLATEAU_PATIENCE = 8
# Keras's own width for MobileNetV3 (its ImageNet weights exist for it); V2 at 0.35 trains as fast as V3-Small at 1.0
DEFAULT_ALPHA = {"mobilenet_v2": 0.35, "mobilenet_v3_small": 1.0, "mobilenet_v3_large": 1.0}


class TrainConfig(BaseModel):
    """Every setting of a training run; saved in RUN/config.json."""

    model_config = ConfigDict(extra="forbid")
    data: Path = Field(description="dataset folder")
    out: Path = Field(description="run folder to create")
    arch: Literal["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"] = Field(
        "mobilenet_v3_small", description="backbone from Keras applications")
    alpha: float | None = Field(None, gt=0, le=1.4, description="width multiplier of the backbone; default: "
                                f"{DEFAULT_ALPHA}")
    input_size: int = Field(96, ge=32, le=512, description="square model input side in pixels (96: twice the "
                            "steps of 128 in the same time)")
    weights: str = Field("none", description="'none' (from scratch), 'imagenet', or a local weights file")
    epochs: int = Field(55, ge=1, description="maximum epochs (early stopping may end sooner)")
    head_epochs: int = Field(5, ge=0, description="with pretrained weights: epochs with the backbone frozen")
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adam", "sgd", "rmsprop"] = Field("adam")
    learning_rate: float = Field(2e-3, gt=0, description="initial rate (see lr_schedule)")
    fine_tune_learning_rate: float = Field(1e-4, gt=0, description="after unfreezing a pretrained backbone")
    momentum: float = Field(0.9, ge=0, lt=1, description="for sgd")
    weight_decay: float = Field(1e-4, ge=0, description="decoupled L2 weight decay in the optimizer")
    dropout: float = Field(0.2, ge=0, lt=1)
    pooling: Literal["max", "avg"] = Field("avg", description="global pooling of the backbone's features")
    class_weights: bool = Field(True, description="weight classes by their inverse frequency")
    mask_supervision: float = Field(1.0, ge=0, description="weight of the activation-map loss on images with "
                                    "defect masks (0: image labels only)")
    patience: int | None = Field(None, ge=1, description="early stopping patience on val loss (epochs); default: "
                                 f"the whole run with cosine (it must anneal to its end), {PLATEAU_PATIENCE} with "
                                 "plateau. The epoch of lowest val loss is kept either way")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="share of each label spread over all classes: "
                                   "less overconfident scores, so a hard defect is less often scored near 0")
    lr_schedule: Literal["plateau", "cosine"] = Field(
        "cosine", description="cosine: decay the rate to zero over the epochs; plateau: cut it when val loss stalls")
    steps_per_epoch: int | None = Field(None, ge=1, description="cap batches per epoch (quick runs)")
    seed: int = Field(0)
    skip_bad: bool = Field(False, description="skip unreadable images instead of failing")
    init_from: Path | None = Field(None, description="continue from an earlier run's model")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _resolve_defaults(self):
        if self.alpha is None:
            self.alpha = DEFAULT_ALPHA[self.arch]
        if self.patience is None:
            self.patience = self.epochs if self.lr_schedule == "cosine" else PLATEAU_PATIENCE
        return self


def _optimizer(cfg: TrainConfig, lr: float):
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay or None)
    if cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, weight_decay=cfg.weight_decay or None)
    return keras.optimizers.Adam(lr, weight_decay=cfg.weight_decay or None)


class DefectRecall(keras.metrics.Metric):
    """Share of defective parts (any label but 0, `good`) whose most likely class is a defect, counted per
    part: the class weights the loss carries are ignored. 1.0 when there are no defective parts."""

    def __init__(self, name="defect_recall", **kwargs):
        super().__init__(name=name, **kwargs)
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.defects = self.add_variable(shape=(), initializer="zeros", name="defects")

    def update_state(self, y_true, y_pred, sample_weight=None):
        defect = keras.ops.cast(keras.ops.reshape(y_true, (-1,)) != 0, "float32")
        flagged = keras.ops.cast(keras.ops.argmax(y_pred, axis=-1) != 0, "float32")
        self.hits.assign_add(keras.ops.sum(defect * flagged))
        self.defects.assign_add(keras.ops.sum(defect))

    def result(self):
        return keras.ops.where(self.defects > 0, self.hits / keras.ops.maximum(self.defects, 1.0), 1.0)


class EpochLine(keras.callbacks.Callback):
    """Prints one line per epoch (a two-output trainer names its metrics probs_accuracy and so on)."""

    ALIASES = {"accuracy": "probs_accuracy", "val_accuracy": "val_probs_accuracy",
               "val_defect_recall": "val_probs_defect_recall"}

    def __init__(self, phase: str):
        super().__init__()
        self.phase = phase

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        for key, two_output_name in self.ALIASES.items():
            logs.setdefault(key, logs.get(two_output_name, float("nan")))
        print(f"{self.phase} epoch {epoch + 1:3d}  loss {logs['loss']:.4f}  acc {logs['accuracy']:.4f}  "
              f"val_loss {logs['val_loss']:.4f}  val_acc {logs['val_accuracy']:.4f}  "
              f"val_defect_recall {logs['val_defect_recall']:.4f}  {time.monotonic() - self.t0:.1f}s",
              flush=True)


def balanced_class_weights(y: np.ndarray, n: int) -> dict[int, float]:
    counts = np.bincount(y, minlength=n).astype(float)
    return {i: float(len(y) / (n * c)) if c else 0.0 for i, c in enumerate(counts)}


def masked_sparse_ce(y_true, y_pred):
    """Cross-entropy over the activation map's cells; cells marked -1 (no mask to say) are ignored."""
    y_true = keras.ops.cast(y_true, "int32")
    valid = keras.ops.cast(y_true >= 0, "float32")
    ce = keras.losses.sparse_categorical_crossentropy(keras.ops.maximum(y_true, 0), y_pred)
    return keras.ops.sum(ce * valid, axis=(1, 2)) / keras.ops.maximum(keras.ops.sum(valid, axis=(1, 2)), 1.0)


def _rate(cfg: TrainConfig, lr: float, epochs: int, steps_per_epoch: int):
    """The learning rate the optimizer gets: a number (cut on plateau by a callback) or a cosine schedule."""
    return keras.optimizers.schedules.CosineDecay(lr, epochs * steps_per_epoch) if cfg.lr_schedule == "cosine" else lr


def _class_loss(cfg: TrainConfig):
    """Cross-entropy of the class probabilities against integer labels, smoothed when asked."""
    eps = cfg.label_smoothing
    if not eps:
        return "sparse_categorical_crossentropy"

    def smoothed_sparse_ce(y_true, y_pred):  # Keras smooths one-hot targets only, so the labels become one-hot
        onehot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), y_pred.shape[-1])
        return keras.losses.categorical_crossentropy(onehot, y_pred, label_smoothing=eps)

    return smoothed_sparse_ce


def _fit(net, trainer, cfg, phase, lr, epochs, train_ds, val_ds, history):
    rate = _rate(cfg, lr, epochs, cfg.steps_per_epoch or int(train_ds.cardinality()))
    if trainer is net:
        trainer.compile(optimizer=_optimizer(cfg, rate), loss=_class_loss(cfg), metrics=["accuracy", DefectRecall()])
    else:
        trainer.compile(optimizer=_optimizer(cfg, rate),
                        loss={"probs": _class_loss(cfg), "cam": masked_sparse_ce},
                        loss_weights={"probs": 1.0, "cam": cfg.mask_supervision},
                        metrics={"probs": ["accuracy", DefectRecall()]})
    callbacks = [
        EpochLine(phase),
        keras.callbacks.EarlyStopping("val_loss", patience=cfg.patience, restore_best_weights=True),
    ]
    if cfg.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.3, patience=max(1, cfg.patience // 3),
                                                           min_lr=lr / 100))
    h = trainer.fit(train_ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=cfg.steps_per_epoch,
                    callbacks=callbacks, shuffle=False, verbose=0)  # train_ds shuffles itself
    for key, values in h.history.items():
        history.setdefault(key, []).extend(float(v) for v in values)
    history.setdefault("phase", []).extend([phase] * len(h.history["loss"]))


def train(cfg: TrainConfig) -> dict:
    if cfg.out.exists() and any(cfg.out.iterdir()):
        raise QCError(f"{cfg.out} exists and is not empty; choose a new run folder")
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    ds = data.scan(cfg.data, seed=cfg.seed, skip_bad=cfg.skip_bad)
    print(ds.summary(), flush=True)
    x_train, y_train, m_train = data.load_arrays(ds, "train", cfg.input_size, with_masks=True)
    x_val, y_val, m_val = data.load_arrays(ds, "val", cfg.input_size, with_masks=True)
    h_train = np.array([it.mask is not None for it in ds.split("train")], bool)
    h_val = np.array([it.mask is not None for it in ds.split("val")], bool)
    if cfg.init_from:
        net = models.load(cfg.init_from)
        old = json.loads((Path(cfg.init_from) / "config.json").read_text())["classes"]
        if old != ds.classes:
            raise QCError(f"--init-from {cfg.init_from} was trained on classes {old}, "
                          f"but {cfg.data} has classes {ds.classes}")
        if net.input.shape[1] != cfg.input_size:
            raise QCError(f"--init-from model takes {net.input.shape[1]} px, not --input-size {cfg.input_size}")
    else:
        net = models.build(cfg.arch, len(ds.classes), cfg.input_size, cfg.alpha, cfg.weights, cfg.dropout,
                           cfg.pooling)
    pretrained = models.pretrained_weights(cfg.weights) and not cfg.init_from
    supervise = cfg.mask_supervision > 0 and h_train[y_train != 0].any()
    trainer = models.with_cam(net, for_training=True, pretrained=pretrained) if supervise else net
    grid = trainer.output["cam"].shape[1] if supervise else None
    class_weight = balanced_class_weights(y_train, len(ds.classes)) if cfg.class_weights else None
    train_ds = make_dataset(x_train, y_train, cfg.batch_size, True, cfg.seed, cfg.augment, m_train, h_train, grid,
                            class_weights=class_weight)
    if cfg.steps_per_epoch:
        train_ds = train_ds.repeat()
    # val loss carries the same class weights: early stopping, the plateau cut and the restored weights then
    # follow the objective being trained, not one a model that calls every part good already scores well on
    val_ds = make_dataset(x_val, y_val, cfg.batch_size, False, masks=m_val, has_mask=h_val, grid=grid,
                          class_weights=class_weight)
    cfg.out.mkdir(parents=True, exist_ok=True)
    history: dict[str, list] = {}
    t0 = time.monotonic()
    backbone = net.get_layer("backbone")
    if pretrained and cfg.head_epochs:
        backbone.trainable = False
        _fit(net, trainer, cfg, "head", cfg.learning_rate, cfg.head_epochs, train_ds, val_ds, history)
        backbone.trainable = True  # unfreeze, recompile (in _fit), fine-tune at a low rate
        _fit(net, trainer, cfg, "fine-tune", cfg.fine_tune_learning_rate, cfg.epochs, train_ds, val_ds, history)
    else:
        lr = cfg.fine_tune_learning_rate if cfg.init_from else cfg.learning_rate
        _fit(net, trainer, cfg, "train", lr, cfg.epochs, train_ds, val_ds, history)
    wall = time.monotonic() - t0
    kept = DefectRecall()  # of the model kept (early stopping restores an earlier epoch)
    kept.update_state(y_val, net.predict(x_val, batch_size=64, verbose=0))
    recall = float(kept.result())
    if recall < 0.5:  # e.g. a few hundred photos after the default epochs: every part called good
        flat = {**SMALL_DATASET_RECIPE, **SMALL_DATASET_RECIPE["augment"]}
        longer = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flat.items() if k != "augment")
        print(f"warning: the model finds {recall:.0%} of the validation defects; it has not learnt them yet. "
              f"With few images, train longer: {longer}", flush=True)
    net.save(cfg.out / "model.keras")
    (cfg.out / "history.json").write_text(json.dumps(history, indent=1))
    plots.training_curves(history, cfg.out / "training-curves.png")
    record = {
        **json.loads(cfg.model_dump_json()),
        "classes": ds.classes,
        "dataset": {"root": str(ds.root.resolve()), "layout": ds.layout, "counts": ds.counts(),
                    "manifest_sha256": ds.manifest_sha256},
        "train_seconds": round(wall, 1),
        "epochs_run": len(history["loss"]),
        "val_defect_recall": round(recall, 4),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    (cfg.out / "config.json").write_text(json.dumps(record, indent=1))
    print(f"trained {record['epochs_run']} epochs in {wall:.0f}s -> {cfg.out}", flush=True)
    return record
