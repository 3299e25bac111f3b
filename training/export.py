"""`qc export`: full-integer post-training quantization to a LiteRT model with a CAM output, checked
against the float model on the test split, written as a bundle (model.tflite + model.json)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf
from sklearn import metrics as skm

from edge.bundle import Bundle, BundleError, load_bundle, tensor_spec, write_bundle
from edge.classifiers import make_classifier
from edge.classifiers.base import import_interpreter
from edge.decision import GOOD, defect_scores
from edge.images import decode
from edge.pipeline import frame_scores
from edge.tiles import worst
from firmware_io.mqtt.config import MQTTConfig
from firmware_io.settings import validated
from training import data, edgetpu, goodonly, recipe
from training import model as models
from training.config import DEFECT_LABEL, ExportConfig
from training.errors import TrainingError
from training.evaluate import binary_report, decision_report, pick_threshold
from training.quiet import captured_output

__all__ = ["convert", "export", "representative_indices"]

EDGETPU_SRAM_BYTES = 8 * 1024 * 1024


def representative_indices(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About n indices drawn from every class in proportion, at least one of each."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    alloc = np.maximum(1, (n * counts / len(y)).astype(int))
    biggest = int(np.argmax(counts))
    alloc[biggest] = max(1, alloc[biggest] + n - alloc.sum())  # the rounding goes to the largest class
    alloc = np.minimum(alloc, counts)
    picks = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c, k in zip(classes, alloc)]
    return np.sort(np.concatenate(picks))


def convert(keras_model, mode: str, rep_x: np.ndarray | None = None, io_dtype: str = "uint8",
            per_channel: bool = True) -> bytes:
    """`per_channel=False` quantizes each weight tensor with one scale instead of one per output channel:
    the file loses the per-channel scales and zero points (about 0.4 MB on MobileNetV2 1.0), at some risk
    to accuracy, which the export's float-vs-int8 check measures."""
    conv = tf.lite.TFLiteConverter.from_keras_model(_batch_of_one(keras_model))
    if mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        expected = tuple(keras_model.input.shape[1:])
        if rep_x is None or rep_x.ndim != 4 or tuple(rep_x.shape[1:]) != expected:
            raise TrainingError(f"representative images of shape {None if rep_x is None else rep_x.shape[1:]} "
                                f"do not match the model input {expected}")
        # a black and a white frame calibrate the input tensor to the whole 0..255 range: a part brighter than
        # any in training is not clipped, and camera pixels go in as they are (scale 1, zero point 0, no copy)
        rep_x = np.concatenate([rep_x, np.zeros_like(rep_x[:1]), np.full_like(rep_x[:1], 255)])
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in rep_x)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = {"uint8": tf.uint8, "int8": tf.int8}[io_dtype]
        conv._experimental_disable_per_channel = not per_channel  # the converter's only switch for it
    with captured_output():  # the saved signature and the converter's C++ log, shown only on a failure
        return conv.convert()


def _batch_of_one(model):
    """The same model behind an input whose batch is fixed at 1, so every tensor of the converted graph has a
    static shape (the Edge TPU compiler refuses dynamic ones). Works for Keras 3 and, after --qat, tf-keras."""
    if model.input.shape[0] == 1:
        return model
    k = keras
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as k
    inp = k.Input(tuple(model.input.shape[1:]), batch_size=1, name="image")
    return k.Model(inp, model(inp, training=False), name=model.name)


def _tensor_meta(detail: dict, **extra) -> dict:
    return {"name": detail["name"], **tensor_spec(detail), **extra}


def _edgetpu_check(model: bytes, allow_cpu_ops: bool) -> tuple[bool, list[str]]:
    """Refuse a model the Edge TPU would not run whole (unless allowed: then say what stays on the CPU).
    Returns whether it runs whole, and the notes for the card."""
    problems = edgetpu.check(model)
    if problems and not allow_cpu_ops:
        raise TrainingError(f"the Edge TPU would not run this model whole ({len(problems)} problem(s)): "
                            + "; ".join(map(str, problems[:12])) + "; pass --allow-cpu-ops to export it anyway")
    notes = [f"stays on the CPU: {p}" for p in problems]
    if len(model) > EDGETPU_SRAM_BYTES:
        notes.append(f"the model is {len(model) / 2**20:.1f} MiB, over the Edge TPU's 8 MiB on-chip memory: "
                     "parameters will stream from the host and inference will be slower")
    return not problems, notes


def _photo_probs(probs: np.ndarray, views: data.Views, good: int) -> np.ndarray:
    """Per photo, the probabilities of its worst view (its only one without tiles)."""
    return worst(probs, views.owner, len(views.labels), good)[0]


def _tflite_scores(bundle: Bundle, x: np.ndarray) -> np.ndarray:
    clf = make_classifier(bundle, "cpu")
    return np.stack([clf.infer(img).scores for img in x])


REFERENCES_PER_KIND = 2  # defective and good test photos stored in the bundle, scored again on every box


def _references(bundle: Bundle, folder: Path, test: data.Views, classes: list[str], good: int) -> list[dict]:
    """A few test photos, defective ones first, as the model saw them (the worst tile, or the resized photo),
    each with the scores the exported model gives it through the box's own frame path."""
    clf = make_classifier(bundle, "cpu")
    picks = ([int(p) for p in np.flatnonzero(test.labels != good)[:REFERENCES_PER_KIND]]
             + [int(p) for p in np.flatnonzero(test.labels == good)[:REFERENCES_PER_KIND]])
    refs = []
    for k, photo in enumerate(picks):
        views = np.flatnonzero(test.owner == photo)
        view = max(views, key=lambda v: defect_scores(clf.infer(test.x[v]).scores, good))
        file = folder / f"reference-{k}.png"
        cv2.imwrite(str(file), cv2.cvtColor(test.x[view], cv2.COLOR_RGB2BGR))
        content = file.read_bytes()
        scores = frame_scores(clf, bundle, decode(content, str(file)))
        refs.append({"file": file.name, "sha256": hashlib.sha256(content).hexdigest(),
                     "label": classes[test.labels[photo]],
                     "scores": {label: float(s) for label, s in zip(classes, scores)}})
    return refs


def export(run: Path, out: Path, **settings) -> dict:
    """Quantize RUN's model, check it against float on the test split and write the bundle OUT;
    `settings` are ExportConfig's fields (`qc export --help`)."""
    cfg_x = validated(ExportConfig, settings, "export settings")
    mode, io_dtype, qat_epochs, max_drop = cfg_x.mode, cfg_x.io, cfg_x.qat, cfg_x.max_drop
    per_channel = not cfg_x.per_tensor
    run, out = Path(run), Path(out)
    if qat_epochs and (mode != "int8" or not per_channel):
        raise TrainingError("--qat fine-tunes for --int8 with per-channel weights (the ranges it learns); "
                            f"it does not combine with {'--per-tensor' if mode == 'int8' else '--' + mode}")
    net = models.load(run)
    cfg = json.loads((run / "config.json").read_text())
    good_only = bool(cfg.get("good_only"))
    if qat_epochs and good_only:
        raise TrainingError("--qat fine-tunes on labelled defects; a good-only run has none (export it without --qat)")
    if out.exists() and any(out.iterdir()) and not cfg_x.force:
        raise BundleError(f"{out} already exists; pass --force to replace it")
    ds = data.scan(cfg_x.data or cfg["dataset"]["root"], seed=cfg["seed"], skip_bad=cfg.get("skip_bad", False),
                   good_only=good_only)
    if ds.classes != cfg["classes"]:
        raise TrainingError(f"the model was trained on classes {cfg['classes']}, but the data has {ds.classes}")
    size, good, tiling = net.input.shape[1], ds.class_index[GOOD], recipe.run_tiling(cfg)
    cam_model = models.with_cam(net, logits=True)
    train_views = data.load_views(ds, "train", size, tiling)
    x_train, y_train = train_views.x, train_views.y  # on tiles, -1 (a sliver of a defect) is a group of its own
    rep = x_train[representative_indices(y_train, cfg_x.representative, cfg["seed"])]
    if good_only:  # calibrated on painted defects too: their activations are the ones the threshold is near
        rep = goodonly.with_painted(train_views.take(representative_indices(y_train, cfg_x.representative // 2,
                                                                            cfg["seed"])),
                                    cfg["painters"], cfg["seed"], ds.class_index[DEFECT_LABEL]).x
    evaluation = json.loads((run / "eval" / "metrics.json").read_text()) if (run / "eval" / "metrics.json").exists() else None
    choose = evaluation or good_only  # a good-only run needs no evaluation: its good val photos set the threshold
    if qat_epochs or choose:  # fine-tuning validates on it; the threshold is chosen again on it
        val_views = data.load_views(ds, "val", size, tiling)
    if qat_epochs:
        from training import qat
        from training.train import balanced_class_weights

        t_train, t_val = train_views.labelled(), val_views.labelled()
        cam_model = qat.quantization_aware(
            net, cfg["arch"], cfg["alpha"], (t_train.x, t_train.y), (t_val.x, t_val.y), qat_epochs,
            balanced_class_weights(t_train.y, len(ds.classes)) if cfg.get("class_weights", True) else None,
            cfg.get("label_smoothing", 0.0), seed=cfg["seed"])  # runs from before label smoothing: none
    model = convert(cam_model, mode, rep, io_dtype, per_channel)
    # refused before any work
    runs_whole, edgetpu_notes = _edgetpu_check(model, cfg_x.allow_cpu_ops) if cfg_x.edgetpu else (False, [])
    threshold = {"value": 0.5, "method": "default: run `qc evaluate` to choose one"}
    interpreter_cls, _ = import_interpreter()
    it = interpreter_cls(model_content=model)
    outs = it.get_output_details()
    logits_d = next(d for d in outs if len(d["shape"]) == 2)
    cam_d = next(d for d in outs if len(d["shape"]) == 4)
    meta = {
        "name": f"{run.name}-{mode}",
        "labels": ds.classes,
        "input": _tensor_meta(it.get_input_details()[0], color="rgb", resize="area",
                              range="raw 0..255 pixels; normalization is inside the model"),
        "output": _tensor_meta(logits_d, kind="logits"),
        "cam": _tensor_meta(cam_d, kind="logits-per-location", good_index=good),
        "threshold": threshold,
        "tiling": cfg.get("tiling"),
        "quantization": {"mode": mode, "representative_images": len(rep),
                         "method": f"quantization-aware fine-tuning, {qat_epochs} epoch{'s' * (qat_epochs > 1)}" if qat_epochs
                         else "post-training",
                         "io_dtype": io_dtype if mode == "int8" else "float32"}
        | ({"weights": "per-channel" if per_channel else "per-tensor"} if mode == "int8" else {}),
        "metrics": {},
        "training": {k: cfg[k] for k in ("arch", "alpha", "input_size", "weights", "seed", "epochs_run")}
        | {"data_manifest_sha256": cfg["dataset"]["manifest_sha256"], "run": str(run)}
        | ({"good_only": True, "painters": cfg["painters"],
            "note": "trained on good parts only, with defects painted on them: no real defect was seen"}
           if good_only else {}),
    }
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    bundle = write_bundle(staging, model, meta)
    if choose:
        # the threshold is chosen again on val with the exported model's own scores, which quantization moves
        lite_val = defect_scores(_photo_probs(_tflite_scores(bundle, val_views.x), val_views, good), good)
        photo_defect = val_views.labels != good
        target = evaluation["threshold"].get("target_recall") if evaluation else None
        float_value = (evaluation["threshold"]["value"] if evaluation else pick_threshold(
            cfg, defect_scores(_photo_probs(net.predict(val_views.x.astype(np.float32), verbose=0), val_views, good),
                               good), photo_defect, target)["value"])
        threshold = pick_threshold(cfg, lite_val, photo_defect, target) | {
            "float_value": float_value, "chosen_with": f"the {mode} model"}
        meta["threshold"] = threshold
    # float vs exported on the test split, each at the threshold chosen for it
    test = data.load_views(ds, "test", size, tiling)
    painted_test = good_only and not (test.labels != good).any()
    if painted_test:  # a good-only dataset: the check and the references need defects, painted on test photos
        test = goodonly.with_painted(test, cfg["painters"], cfg["seed"], ds.class_index[DEFECT_LABEL])
    y_test = test.labels
    is_defect = y_test != good
    float_probs = _photo_probs(net.predict(test.x.astype(np.float32), verbose=0), test, good)
    lite_probs = _photo_probs(_tflite_scores(bundle, test.x), test, good)
    float_scores, lite_scores = defect_scores(float_probs, good), defect_scores(lite_probs, good)
    m_float = binary_report(float_scores, is_defect, threshold.get("float_value", threshold["value"]))
    m_lite = binary_report(lite_scores, is_defect, threshold["value"])
    # threshold-free figures too: at 99 % recall the chosen threshold rests on the two or three lowest-scored
    # validation defects, so F1 at the threshold moves with them as much as with the quantization
    for m, probs in ((m_float, float_probs), (m_lite, lite_probs)):
        m["argmax_f1"] = decision_report(probs.argmax(1) != good, is_defect)["f1"]
        both = 0 < is_defect.sum() < len(is_defect)
        m["roc_auc"] = float(skm.roc_auc_score(is_defect, defect_scores(probs, good))) if both else None
    drop = {k: m_float[k] - m_lite[k] for k in ("f1", "recall")}
    meta["metrics"] = {"split": "test", "n": int(len(y_test)), "float": m_float, mode: m_lite, "drop": drop,
                       "max_score_diff": float(np.abs(float_scores - lite_scores).max())}
    if painted_test:
        meta["metrics"]["defects"] = "painted on the test split's good photos (the dataset has no defect photos)"
    notes = list(edgetpu_notes)
    if runs_whole:
        if edgetpu.compiler():
            meta["edgetpu"] = edgetpu.compiled_target(staging / "model.tflite", staging)
        else:
            meta["edgetpu"] = {"status": "ready"}
            notes.append("edgetpu_compiler is not on PATH: the bundle is Edge TPU ready, not compiled; "
                         "`qc bundle compile BUNDLE` compiles it on an x86-64 machine with Coral's edgetpu-compiler")
    lo, hi = MQTTConfig.model_fields["threshold_limits"].default
    if not lo <= threshold["value"] <= hi:
        notes.append(f"the threshold {threshold['value']:.4f} is outside the default command limits "
                     f"mqtt.threshold_limits [{lo}, {hi}]: a box refuses to load this bundle by command")
    meta["references"] = _references(bundle, staging, test, ds.classes, good)
    meta["notes"] = notes
    bundle = write_bundle(staging, model, meta, force=True)
    if max(drop.values()) > max_drop and not cfg_x.allow_drop:
        shutil.rmtree(staging)
        raise TrainingError(f"{mode} model loses too much: F1 {m_float['f1']:.4f} -> {m_lite['f1']:.4f}, defect recall "
                            f"{m_float['recall']:.4f} -> {m_lite['recall']:.4f} (max drop {max_drop})"
                      + ("" if qat_epochs else "; --qat 2 fine-tunes the model for int8 and usually recovers it")
                      + "; pass --allow-drop to export anyway")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    load_bundle(out)
    return {"bundle": str(out), "size_bytes": len(model), "metrics": meta["metrics"], "edgetpu": meta.get("edgetpu"),
            "notes": notes}
