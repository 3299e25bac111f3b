"""`qc train`: fit a MobileNet classifier on a folder dataset, one progress line per epoch.

Writes RUN/model.keras, RUN/history.json, RUN/training-curves.png and RUN/config.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from edge.decision import GOOD
from edge.tiles import worst
from training import data, goodonly, plots, recipe
from training import model as models
from training.config import DEFECT_LABEL, TrainConfig
from training.errors import TrainingError
from training.input_pipeline import make_dataset

__all__ = ["TrainConfig", "train"]


def _optimizer(cfg: TrainConfig, lr: float):
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay or None)
    if cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, weight_decay=cfg.weight_decay or None)
    return keras.optimizers.Adam(lr, weight_decay=cfg.weight_decay or None)


class DefectRecall(keras.metrics.Metric):
    """Share of defective parts (any label but `good_index`) whose most likely class is a defect, counted per
    part: the class weights the loss carries are ignored. 1.0 when there are no defective parts."""

    def __init__(self, good_index: int, name="defect_recall", **kwargs):
        super().__init__(name=name, **kwargs)
        self.good_index = good_index
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.defects = self.add_variable(shape=(), initializer="zeros", name="defects")

    def update_state(self, y_true, y_pred, sample_weight=None):
        defect = keras.ops.cast(keras.ops.reshape(y_true, (-1,)) != self.good_index, "float32")
        flagged = keras.ops.cast(keras.ops.argmax(y_pred, axis=-1) != self.good_index, "float32")
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


def _fit(net, trainer, cfg, phase, lr, epochs, train_ds, val_ds, history, good):
    rate = _rate(cfg, lr, epochs, cfg.steps_per_epoch or int(train_ds.cardinality()))
    if trainer is net:
        trainer.compile(optimizer=_optimizer(cfg, rate), loss=_class_loss(cfg), metrics=["accuracy", DefectRecall(good)])
    else:
        trainer.compile(optimizer=_optimizer(cfg, rate),
                        loss={"probs": _class_loss(cfg), "cam": masked_sparse_ce},
                        loss_weights={"probs": 1.0, "cam": cfg.mask_supervision},
                        metrics={"probs": ["accuracy", DefectRecall(good)]})
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


def _init_from(cfg: TrainConfig, classes: list[str]) -> tuple[keras.Model, TrainConfig, str]:
    """The model a run continues from, the settings it brings (its backbone), and what was done: the same
    classes continue as they are; a good-only run's backbone takes a new head for the labelled data's classes
    (its two classes say nothing of them)."""
    net = models.load(cfg.init_from)
    old = json.loads((Path(cfg.init_from) / "config.json").read_text())
    if net.input.shape[1] != cfg.input_size:
        raise TrainingError(f"--init-from model takes {net.input.shape[1]} px, not --input-size {cfg.input_size}")
    cfg = cfg.model_copy(update={k: old[k] for k in ("arch", "alpha", "pooling") if k in old})
    if old["classes"] == classes:
        return net, cfg, f"--init-from {cfg.init_from}: its whole model, classes {classes}"
    if not old.get("good_only"):
        raise TrainingError(f"--init-from {cfg.init_from} was trained on classes {old['classes']}, "
                            f"but {cfg.data} has classes {classes}")
    fresh = models.build(cfg.arch, len(classes), cfg.input_size, cfg.alpha, "none", cfg.dropout, cfg.pooling)
    for name in ("preprocess", "backbone"):
        if name in {layer.name for layer in fresh.layers}:
            fresh.get_layer(name).set_weights(net.get_layer(name).get_weights())
    return fresh, cfg, (f"--init-from {cfg.init_from} (good-only, classes {old['classes']}): its backbone kept "
                        f"({cfg.arch} {cfg.alpha}), a new head for classes {classes}")


def train(cfg: TrainConfig) -> dict:
    if cfg.out.exists() and any(cfg.out.iterdir()):
        raise TrainingError(f"{cfg.out} exists and is not empty; choose a new run folder")
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    ds = data.scan(cfg.data, seed=cfg.seed, skip_bad=cfg.skip_bad, good_only=cfg.good_only)
    print(ds.summary(), flush=True)
    plan = recipe.choose(ds, cfg)
    train_views = data.load_views(ds, "train", plan.cfg.input_size, plan.tiling, with_masks=True)
    val_views = data.load_views(ds, "val", plan.cfg.input_size, plan.tiling, with_masks=True)
    good = ds.class_index[GOOD]
    if cfg.good_only:  # validation loss and recall on a fixed painted copy of each good validation view
        val_views = goodonly.with_painted(val_views, cfg.painters, cfg.seed, ds.class_index[DEFECT_LABEL])
    t_train, t_val = train_views.labelled(), val_views.labelled()
    if plan.tiling:
        t_train, said = recipe.oversample(t_train, good)
        plan.reasons += [said] if said else []
    cfg, steps = recipe.schedule(plan.cfg, len(t_train.y), "training tiles" if plan.tiling else "images")
    for line in [*plan.reasons, steps]:
        print(f"recipe: {line}", flush=True)
    if cfg.init_from:
        net, cfg, said = _init_from(cfg, ds.classes)
        print(f"recipe: {said}", flush=True)
    else:
        net = models.build(cfg.arch, len(ds.classes), cfg.input_size, cfg.alpha, cfg.weights, cfg.dropout,
                           cfg.pooling)
    pretrained = models.pretrained_weights(cfg.weights) and not cfg.init_from
    supervise = cfg.mask_supervision > 0 and (cfg.good_only or t_train.has_mask[t_train.y != good].any())
    trainer = models.with_cam(net, for_training=True, pretrained=pretrained) if supervise else net
    grid = trainer.output["cam"].shape[1] if supervise else None
    # good-only: the painter makes half the training views defects, which balances the classes itself
    class_weight = balanced_class_weights(t_train.y, len(ds.classes)) if cfg.class_weights and not cfg.good_only else None
    painter = goodonly.Painter(cfg.painters, cfg.seed) if cfg.good_only else None
    train_ds = make_dataset(t_train.x, t_train.y, cfg.batch_size, True, cfg.seed, cfg.augment, t_train.masks,
                            t_train.has_mask, grid, class_weights=class_weight, good_index=good, painter=painter,
                            defect_index=ds.class_index.get(DEFECT_LABEL))
    if cfg.steps_per_epoch:
        train_ds = train_ds.repeat()
    # val loss carries the same class weights: early stopping, the plateau cut and the restored weights then
    # follow the objective being trained, not one a model that calls every part good already scores well on
    val_ds = make_dataset(t_val.x, t_val.y, cfg.batch_size, False, masks=t_val.masks, has_mask=t_val.has_mask,
                          grid=grid, class_weights=class_weight, good_index=good)
    cfg.out.mkdir(parents=True, exist_ok=True)
    history: dict[str, list] = {}
    t0 = time.monotonic()
    backbone = net.get_layer("backbone")
    if pretrained and cfg.head_epochs:
        backbone.trainable = False
        _fit(net, trainer, cfg, "head", cfg.learning_rate, cfg.head_epochs, train_ds, val_ds, history, good)
        backbone.trainable = True  # unfreeze, recompile (in _fit), fine-tune at a low rate
        _fit(net, trainer, cfg, "fine-tune", cfg.fine_tune_learning_rate, cfg.epochs, train_ds, val_ds, history, good)
    else:
        lr = cfg.fine_tune_learning_rate if cfg.init_from else cfg.learning_rate
        _fit(net, trainer, cfg, "train", lr, cfg.epochs, train_ds, val_ds, history, good)
    wall = time.monotonic() - t0
    kept = DefectRecall(good)  # of the model kept (early stopping restores an earlier epoch), per photo
    probs = net.predict(val_views.x, batch_size=64, verbose=0)
    kept.update_state(val_views.labels, worst(probs, val_views.owner, len(val_views.labels), good)[0])
    recall = float(kept.result())
    if recall < 0.5:
        print(f"warning: the model finds {recall:.0%} of the validation {'painted ' * cfg.good_only}defects; "
              "it has not learnt them yet "
              f"(more --steps, or more defect images)", flush=True)
    net.save(cfg.out / "model.keras")
    (cfg.out / "history.json").write_text(json.dumps(history, indent=1))
    plots.training_curves(history, cfg.out / "training-curves.png")
    record = {
        **json.loads(cfg.model_dump_json()),
        "classes": ds.classes,
        "tiling": plan.tiling.model_dump() if plan.tiling else None,
        "recipe": [*plan.reasons, steps],
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
