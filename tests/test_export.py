"""Round trip: a tiny model trained for a few steps, exported to int8, loaded by the edge side."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edge.bundle import FORMAT_VERSION, BundleError, card_sha256, load_bundle
from edge.classifiers import make_classifier
from edge.errors import QCError
from edge.quant import dequantize, quantize
from qc.cli import main
from training import data
from training import model as models
from training.export import convert, export, representative_indices

from .conftest import write_card
from .test_no_tensorflow import run_without_tf


def test_bundle_has_every_contract_field(bundle_dir, tiny_run):
    meta = json.loads((bundle_dir / "model.json").read_text())
    for key in ("format_version", "name", "created", "labels", "input", "output", "threshold", "metrics",
                "training", "sha256"):
        assert key in meta
    assert meta["input"]["dtype"] == "uint8" and meta["output"]["dtype"] == "uint8"
    # calibrated to the whole pixel range: camera pixels go in as they are, none clipped
    assert meta["input"]["scale"] == 1.0 and meta["input"]["zero_point"] == 0
    assert meta["input"]["color"] == "rgb" and meta["output"]["kind"] == "logits"
    assert meta["labels"] == json.loads((tiny_run / "config.json").read_text())["classes"]
    assert meta["cam"]["shape"][-1] == len(meta["labels"])
    assert {"float", "int8", "drop"} <= set(meta["metrics"])
    assert meta["training"]["data_manifest_sha256"]


def test_edge_scores_match_keras_within_quantization_tolerance(bundle_dir, tiny_run, synth32):
    b = load_bundle(bundle_dir)
    clf = make_classifier(b)
    net = models.load(tiny_run)
    cfg = json.loads((tiny_run / "config.json").read_text())
    x, _, _ = data.load_arrays(data.scan(synth32, seed=cfg["seed"]), "test", 32)
    keras_probs = net.predict(x.astype(np.float32), verbose=0)
    edge_probs = np.stack([clf.infer(img).scores for img in x])
    # uint8 output has a step of 1/256; a few steps of error through a tiny net are expected
    assert np.abs(edge_probs - keras_probs).max() < 0.1
    assert (edge_probs.argmax(1) == keras_probs.argmax(1)).mean() >= 0.9


def test_edge_side_runs_the_bundle_without_tensorflow(bundle_dir):
    proc = run_without_tf(
        """
        import numpy as np
        from edge.bundle import load_bundle
        from edge.classifiers import make_classifier
        b = load_bundle(sys.argv[1])
        r = make_classifier(b).infer(np.zeros(b.meta["input"]["shape"][1:], np.uint8))
        print(float(r.scores.sum()), r.cam.shape)
        """,
        str(bundle_dir),
    )
    assert proc.returncode == 0, proc.stderr
    assert abs(float(proc.stdout.split()[0]) - 1) < 0.05


def test_tampered_and_truncated_models_are_refused(bundle_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    data_ = (bad / "model.tflite").read_bytes()
    (bad / "model.tflite").write_bytes(data_[: len(data_) // 2])
    with pytest.raises(BundleError, match="sha256 .* does not match"):
        load_bundle(bad)
    assert main(["bundle", "verify", str(bad)]) == 2


def test_unknown_format_and_mismatched_tensors_are_named(bundle_dir, tmp_path):
    b = tmp_path / "v"
    shutil.copytree(bundle_dir, b)
    meta = json.loads((b / "model.json").read_text())
    write_card(b, meta | {"format_version": 99})
    with pytest.raises(BundleError, match="format_version 99 is not known"):
        load_bundle(b)
    write_card(b, meta | {"output": meta["output"] | {"kind": "sigmoid"}})
    with pytest.raises(BundleError, match="output kind 'sigmoid' is not known"):
        load_bundle(b)
    meta["input"]["shape"] = [1, 64, 64, 3]
    meta["output"]["zero_point"] = 7
    write_card(b, meta)
    with pytest.raises(BundleError, match=r"input shape: model.json says \[1, 64, 64, 3\].*output zero_point"):
        make_classifier(load_bundle(b))


def test_verify_and_show(bundle_dir, capsys):
    assert main(["bundle", "verify", str(bundle_dir)]) == 0
    assert '"ok": true' in capsys.readouterr().out
    assert main(["bundle", "show", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert "threshold" in out and "sha256" in out and "post-training" in out
    # a reader that stops early (`qc bundle show B | head -1`): its end of the pipe is closed before qc writes
    proc = subprocess.Popen([sys.executable, "-m", "qc", "bundle", "show", str(bundle_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    proc.stdout.close()
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_existing_bundle_needs_force_and_run_needs_a_model(bundle_dir, tiny_run, tmp_path):
    with pytest.raises(BundleError, match="already exists; pass --force"):
        export(tiny_run, bundle_dir)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(QCError, match="no trained model"):
        export(tmp_path / "empty_run", tmp_path / "x")


def test_representative_set_shape_is_checked(tiny_run):
    cam = models.with_cam(models.load(tiny_run))
    with pytest.raises(QCError, match="do not match the model input"):
        convert(cam, "int8", np.zeros((4, 48, 48, 3), np.uint8))


def test_representative_set_is_stratified():
    y = np.array([0] * 90 + [1] * 8 + [2] * 2)
    idx = representative_indices(y, 20, seed=0)
    assert set(y[idx]) == {0, 1, 2} and len(idx) == 20


def test_max_drop_refuses_and_leaves_nothing(tiny_run, tmp_path):
    # a negative max drop cannot be met: the export must refuse and leave no bundle behind
    with pytest.raises(QCError, match="loses too much"):
        export(tiny_run, tmp_path / "b", representative=8, max_drop=-1.0)
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()


def test_float32_export_and_edgetpu_advice(tiny_run, tmp_path):
    with pytest.raises(QCError, match="Edge TPU would not run this model whole.*float output"):
        export(tiny_run, tmp_path / "refused", mode="float32", allow_drop=True, edgetpu=True)
    assert not (tmp_path / "refused").exists()
    res = export(tiny_run, tmp_path / "f", mode="float32", allow_drop=True, edgetpu=True, allow_cpu_ops=True)
    assert load_bundle(tmp_path / "f").meta["input"]["dtype"] == "float32"
    assert any(n.startswith("stays on the CPU") for n in res["notes"])
    assert load_bundle(tmp_path / "f").card.edgetpu is None  # not a bundle for the Edge TPU
    assert res["metrics"]["max_score_diff"] < 1e-4  # float32 LiteRT equals Keras


def test_quantization_math():
    x = np.array([0, 128, 255], np.uint8)
    assert quantize(x, np.uint8, 1.0, 0) is x
    q = quantize(x, np.int8, 1.0, -128)
    assert q.tolist() == [-128, 0, 127]
    assert dequantize(np.array([0, 128, 255], np.uint8), 1 / 256, 0).tolist() == [0, 0.5, 255 / 256]
    assert dequantize(np.array([-128, 127], np.int8), 0.5, -128).tolist() == [0.0, 127.5]


def test_export_cli_help_names_modes():
    proc = subprocess.run([sys.executable, "-m", "qc", "export", "--help"], capture_output=True, text=True)
    assert "--float16" in proc.stdout and "--edgetpu" in proc.stdout


def test_threshold_is_chosen_again_with_the_exported_models_scores(tiny_run, synth32, tmp_path):
    from training.evaluate import evaluate

    m = evaluate(tiny_run, synth32, target_recall=0.9)
    export(tiny_run, tmp_path / "b", representative=16, allow_drop=True)
    thr = load_bundle(tmp_path / "b").meta["threshold"]
    assert thr["float_value"] == m["threshold"]["value"] and thr["chosen_with"] == "the int8 model"
    assert thr["target_recall"] == 0.9 and 0 <= thr["value"] <= 1
    lo, hi = thr["recall_interval"]  # what the int8 model's validation recall vouches for
    assert 0 <= lo < hi <= 1 and m["threshold"]["recall_interval"][0] < 1
    assert main(["bundle", "show", str(tmp_path / "b")]) == 0


def _lite_outputs(model: bytes, x: np.ndarray) -> np.ndarray:
    from edge.classifiers.base import import_interpreter

    it = import_interpreter()[0](model_content=model)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for img in x:
        it.set_tensor(i["index"], img[None])
        it.invoke()
        rows.append(dequantize(it.get_tensor(o["index"])[0], *o["quantization"]))
    return np.stack(rows)


def test_quantized_logits_keep_small_defect_scores_that_a_quantized_softmax_loses():
    import keras

    from edge.classifiers.base import softmax

    # defect score = 1 - p(good) from about 0.001 to 0.02, where a reject threshold for 99 % recall can sit
    inp = keras.Input((8, 8, 3))
    logits = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(inp))
    net = keras.Model(inp, logits)
    net.get_layer("head").set_weights([np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]) / 255, np.array([0.0, -7.0])])
    x = np.repeat(np.linspace(0, 255, 64).astype(np.uint8), 8 * 8 * 3).reshape(64, 8, 8, 3)
    truth = 1 - softmax(net.predict(x.astype(np.float32), verbose=0))[:, 0]
    with_softmax = keras.Model(inp, keras.layers.Softmax()(logits))
    from_probs = 1 - _lite_outputs(convert(with_softmax, "int8", x), x)[:, 0]
    from_logits = 1 - softmax(_lite_outputs(convert(net, "int8", x), x))[:, 0]
    assert np.abs(from_logits / truth - 1).max() < 0.2
    assert np.abs(from_probs / np.maximum(truth, 1e-9) - 1).max() > 0.5  # steps of 1/256 cannot follow


def test_per_tensor_weights_make_a_smaller_bundle(bundle_dir, tiny_run, tmp_path):
    export(tiny_run, tmp_path / "pt", representative=16, allow_drop=True, per_tensor=True)
    pt = load_bundle(tmp_path / "pt")
    assert pt.meta["quantization"]["weights"] == "per-tensor"
    assert load_bundle(bundle_dir).meta["quantization"]["weights"] == "per-channel"
    assert pt.model_path.stat().st_size < 0.9 * load_bundle(bundle_dir).model_path.stat().st_size


def _twin_logits_match(net, arch):
    from training import qat

    _, tf_keras = qat._import_toolkit()
    twin, _ = qat._twin(net, arch, 0.35, tf_keras)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    want, got = models.with_cam(net, logits=True).predict(x, verbose=0), twin.predict(x, verbose=0)
    return [float(np.abs(w - g).max()) for w, g in zip(want, got)]


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_small_minimalistic"])
def test_qat_twin_computes_what_the_keras_model_computes(arch):
    assert max(_twin_logits_match(models.build(arch, 3, 32, 0.35), arch)) < 1e-4


def test_qat_twin_of_a_pretrained_style_model_with_rescaling(tmp_path):
    import keras

    weights = tmp_path / "backbone.weights.h5"
    keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None) \
        .save_weights(weights)
    net = models.build("mobilenet_v2", 2, 32, 0.35, weights=str(weights))
    assert type(net.get_layer("preprocess")).__name__ == "Rescaling"
    assert max(_twin_logits_match(net, "mobilenet_v2")) < 1e-4


def test_qat_export_fine_tunes_a_fake_quantized_twin(tiny_run, synth32, tmp_path, monkeypatch, capsys):
    from training import qat

    seen = {}
    original = qat.quantization_aware

    def spy(*args, **kwargs):
        seen["model"] = model = original(*args, **kwargs)
        return model

    monkeypatch.setattr(qat, "quantization_aware", spy)
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "q"), "--representative", "16", "--allow-drop",
                 "--qat", "1"]) == 0
    out, err = capsys.readouterr()
    assert "int8" in json.loads(out)["metrics"] and "val_loss" in err  # progress on stderr, results on stdout
    wrapped = {type(layer.layer).__name__: layer.trainable for layer in seen["model"].layers if hasattr(layer, "layer")}
    # every weighted layer carries fake quantization; BatchNorm runs in inference mode, the convolutions train
    assert {"Conv2D", "DepthwiseConv2D", "Dense", "BatchNormalization"} <= set(wrapped)
    assert wrapped["BatchNormalization"] is False and wrapped["Conv2D"] is True
    conv = next(layer for layer in seen["model"].layers if type(getattr(layer, "layer", None)).__name__ == "Conv2D")
    assert next(w for w in conv.weights if "kernel_min" in w.name).shape[0] > 1  # a weight range per channel
    b = load_bundle(tmp_path / "q")
    assert b.meta["quantization"]["method"] == "quantization-aware fine-tuning, 1 epoch"
    net = models.load(tiny_run)
    x, _, _ = data.load_arrays(data.scan(synth32, seed=11), "test", 32)
    clf = make_classifier(b)
    edge = [clf.infer(img) for img in x]
    assert edge[0].cam.shape[-1] == len(b.meta["labels"])
    # one epoch at a low rate moves the model little: the int8 scores still follow the trained model's
    assert np.abs(np.stack([r.scores for r in edge]) - net.predict(x.astype(np.float32), verbose=0)).max() < 0.15


def test_qat_needs_int8_with_per_channel_weights(tiny_run, tmp_path):
    for kwargs in ({"per_tensor": True}, {"mode": "float16"}):
        with pytest.raises(QCError, match="--qat fine-tunes for --int8"):
            export(tiny_run, tmp_path / "x", qat=1, **kwargs)


def test_bundle_card_is_format_2_and_covers_its_own_content(bundle_dir, tmp_path):
    card = json.loads((bundle_dir / "model.json").read_text())
    assert card["format_version"] == FORMAT_VERSION == 2 and card["card_sha256"] == card_sha256(card)
    b = tmp_path / "edited"
    shutil.copytree(bundle_dir, b)
    (b / "model.json").write_text(json.dumps(card | {"threshold": card["threshold"] | {"value": 0.999}}))
    with pytest.raises(BundleError, match="card_sha256 does not match"):
        load_bundle(b)
    assert main(["bundle", "verify", str(b)]) == 2


@pytest.mark.parametrize("kind, expected", [("logits", "logits"), (None, "softmax")])
def test_format_1_bundles_are_read_with_their_output_kind(bundle_dir, tmp_path, kind, expected):
    card = json.loads((bundle_dir / "model.json").read_text())
    v1 = {k: v for k, v in card.items() if k != "card_sha256"} | {"format_version": 1}
    v1["output"] = {k: v for k, v in card["output"].items() if k != "kind"} | ({"kind": kind} if kind else {})
    b = tmp_path / "v1"
    shutil.copytree(bundle_dir, b)
    write_card(b, v1)
    old, new = load_bundle(b), load_bundle(bundle_dir)
    assert old.output_kind == expected and new.output_kind == "logits"
    x = np.random.default_rng(0).integers(0, 256, (*new.input_size, 3), dtype=np.uint8)
    scores_old, scores_new = make_classifier(old).infer(x).scores, make_classifier(new).infer(x).scores
    if kind == "logits":  # the same model read as the same kind: the same scores
        np.testing.assert_allclose(scores_old, scores_new, rtol=1e-6)
    else:  # logits taken for probabilities, as a format 1 card without a kind says: not a softmax
        assert not np.allclose(scores_old, scores_new)


def test_a_card_that_breaks_the_schema_names_the_field(bundle_dir, tmp_path):
    card = json.loads((bundle_dir / "model.json").read_text())
    b = tmp_path / "s"
    shutil.copytree(bundle_dir, b)
    for change, named in [({"labels": ["crack", "spot"]}, "labels"), ({"threshold": {"value": float("nan"),
                          "method": "x"}}, "threshold.value"), ({"model_file": "../../etc/passwd"}, "model_file"),
                          ({"thershold": 0.5}, "thershold")]:
        write_card(b, card | change)
        with pytest.raises(BundleError, match=named):
            load_bundle(b)


def _ops(model: bytes) -> list[str]:
    from training.edgetpu import _interpreter

    return [op["op_name"] for op in _interpreter(model)._get_ops_details()]


def test_the_exported_graph_is_static_and_its_map_a_convolution(bundle_dir):
    """Batch fixed at 1, no tensor of dynamic size, the map from a 1x1 convolution: no SHAPE, GATHER,
    REDUCE_PROD, PACK or run-time RESHAPE (what a Dense head on a 4-D tensor becomes); every operator of the
    default bundle in the Edge TPU's table, within its conditions."""
    from edge.classifiers.base import import_interpreter
    from training import edgetpu

    b = load_bundle(bundle_dir)
    model = b.model_path.read_bytes()
    it = import_interpreter()[0](model_content=model)
    for d in [*it.get_input_details(), *it.get_output_details()]:
        assert -1 not in list(d["shape_signature"]) and d["shape"][0] == 1
    assert not {"SHAPE", "GATHER", "REDUCE_PROD", "PACK"} & set(_ops(model))
    assert set(_ops(model)) <= set(edgetpu.OPS) and edgetpu.check(model) == []
    assert b.card.cam.kind == "logits-per-location" and b.card.output.kind == "logits"
    r = make_classifier(b).infer(np.zeros((*b.input_size, 3), np.uint8))
    np.testing.assert_allclose(r.cam.sum(-1), 1.0, atol=1e-5)  # the box applies the softmax per cell


def test_edgetpu_check_passes_minimalistic_and_v2_models_and_names_hard_swish(tmp_path):
    from training import edgetpu
    from training.export import convert

    x = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    for arch in ("mobilenet_v3_small_minimalistic", "mobilenet_v2"):  # V2 with its per-image standardization
        net = models.with_cam(models.build(arch, 3, 64, 0.35), logits=True)
        problems = edgetpu.check(convert(net, "int8", x))
        assert problems == [], (arch, problems)
    x = x[:, :32, :32]
    default = models.with_cam(models.build("mobilenet_v3_small", 3, 32, 0.35), logits=True)
    named = {p.op for p in edgetpu.check(convert(default, "int8", x))}
    assert "HARD_SWISH" in named
    text = str(next(p for p in edgetpu.check(convert(default, "int8", x)) if p.op == "HARD_SWISH"))
    assert text.startswith("operator ") and "not in the Edge TPU's operator table" in text


@pytest.fixture(scope="module")
def hard_swish_run(synth32, tmp_path_factory):
    """The tiny recipe on MobileNetV3-Small with hard-swish, the default before the Edge TPU."""
    from training.config import TrainConfig
    from training.train import train

    from .conftest import TINY

    out = tmp_path_factory.mktemp("hard_swish") / "run"
    train(TrainConfig(data=synth32, out=out, **(TINY | {"arch": "mobilenet_v3_small"})))
    return out


def test_edgetpu_export_refuses_with_the_operators_named(hard_swish_run, tmp_path):
    with pytest.raises(QCError, match=r"operator \d+ HARD_SWISH: not in the Edge TPU's operator table"):
        export(hard_swish_run, tmp_path / "e", representative=8, allow_drop=True, edgetpu=True)
    assert not (tmp_path / "e").exists() and not (tmp_path / "e.partial").exists()


def test_standardize_is_the_per_image_standardization_of_a_grid():
    """The Edge-TPU-mappable form (max pool for the grid, channel mean as a sum) computes what a strided slice
    and a mean over all grid values do."""
    x = np.random.default_rng(5).uniform(0, 255, (2, 128, 96, 3)).astype(np.float32)
    grid = x[:, ::3, ::3, :]  # 96 // 32: a pixel of every 3 x 3
    mean = grid.mean(axis=(1, 2, 3), keepdims=True)
    var = ((grid - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
    got = np.asarray(models.Standardize()(x))
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(var + 1.0), rtol=1e-4, atol=1e-4)


def test_a_dynamic_reshape_is_refused_with_the_operator_named():
    """What a Dense head on a 4-D tensor becomes when the batch is left free: SHAPE / GATHER / REDUCE_PROD
    feeding a RESHAPE whose shape is computed at run time."""
    import keras
    import tensorflow as tf

    from training.export import _edgetpu_check

    inp = keras.Input((8, 8, 3))
    net = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Conv2D(8, 3, activation="relu")(inp)))
    conv = tf.lite.TFLiteConverter.from_keras_model(net)  # batch free, as the exports before 0d95f1c were
    conv.optimizations, conv.target_spec.supported_ops = [tf.lite.Optimize.DEFAULT], [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.representative_dataset = lambda: ([x[None]] for x in np.random.default_rng(0).random((4, 8, 8, 3), np.float32))
    with pytest.raises(QCError, match=r"dynamic shape \[-1, 8, 8, 3\].*operator \d+ SHAPE: not in the "
                       r"Edge TPU's operator table.*operator \d+ RESHAPE: a tensor of dynamic size"):
        _edgetpu_check(conv.convert(), allow_cpu_ops=False)


def test_the_convolution_map_is_the_dense_head_at_every_location(tiny_run):
    from edge.classifiers.base import softmax

    net = models.load(tiny_run)
    x = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    logits, cam_logits = models.with_cam(net, logits=True).predict(x, verbose=0)
    probs, cam = models.with_cam(net).predict(x, verbose=0)
    np.testing.assert_allclose(softmax(cam_logits), cam, atol=1e-5)
    np.testing.assert_allclose(softmax(logits), probs, atol=1e-5)


def test_verify_uses_the_configured_backend_and_names_libedgetpu(bundle_dir, tmp_path, capsys):
    b = tmp_path / "tpu"
    shutil.copytree(bundle_dir, b)
    (b / "model.tflite").rename(b / "model_edgetpu.tflite")  # as edgetpu_compiler names its output
    write_card(b, json.loads((b / "model.json").read_text()) | {"model_file": "model_edgetpu.tflite"})
    config = tmp_path / "edge.yaml"
    config.write_text(f"bundle: {b}\nclassifier: {{backend: edgetpu}}\n")
    assert main(["bundle", "verify", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "libedgetpu" in err and "ai-edge-litert" in err and "Traceback" not in err
    config.write_text(f"bundle: {bundle_dir}\nclassifier: {{backend: cpu}}\n")
    assert main(["bundle", "verify", "--config", str(config)]) == 0
    assert '"backend": "cpu"' in capsys.readouterr().out


# A report in edgetpu_compiler 16's format (-s), replayed by a stand-in: the compiler exists only in Coral's
# apt repository, for x86-64, and is not on these machines.
MAPPED_REPORT = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 412 ms.

Input model: {model}
Input size: 1.02MiB
Output model: {output}
Output size: 1.21MiB
On-chip memory used for caching model parameters: 1.01MiB
On-chip memory remaining for caching model parameters: 6.67MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 64
Operation log: {log}

Operator                       Count      Status

CONV_2D                        34         Mapped to Edge TPU
DEPTHWISE_CONV_2D              11         Mapped to Edge TPU
ADD                            6          Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
QUANTIZE                       3          Mapped to Edge TPU
MUL                            4          Mapped to Edge TPU
RELU                           4          Mapped to Edge TPU
Compilation child process completed within timeout period.
Compilation succeeded!
"""
CPU_REPORT_TAIL = """
Number of operations that will run on Edge TPU: 60
Number of operations that will run on CPU: 4

Operator                       Count      Status

CONV_2D                        34         Mapped to Edge TPU
HARD_SWISH                     4          Operation not supported
"""


@pytest.fixture
def stand_in_compiler(tmp_path, monkeypatch):
    """An `edgetpu_compiler` on PATH that copies the model and prints a recorded report."""
    bin_dir, report = tmp_path / "bin", tmp_path / "report.txt"
    bin_dir.mkdir()
    exe = bin_dir / "edgetpu_compiler"
    exe.write_text(f"""#!{sys.executable}
import pathlib, shutil, sys
args = sys.argv[1:]
out, model = pathlib.Path(args[args.index("-o") + 1]), pathlib.Path(args[-1])
output = out / (model.stem + "_edgetpu.tflite")
shutil.copyfile(model, output)
print(pathlib.Path({str(report)!r}).read_text().format(model=model.name, output=output.name, log=output.stem + ".log"))
""")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    report.write_text(MAPPED_REPORT)
    return report


def test_an_edgetpu_export_without_the_compiler_is_marked_ready(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no edgetpu_compiler
    res = export(tiny_run, tmp_path / "b", representative=8, allow_drop=True, edgetpu=True)
    b = load_bundle(tmp_path / "b")
    assert b.card.edgetpu.status == "ready" and any("not compiled" in n for n in res["notes"])
    assert make_classifier(b).name == "cpu"  # auto: the CPU model until it is compiled
    with pytest.raises(BundleError, match="Edge TPU ready, not compiled.*qc bundle compile"):
        make_classifier(b, "edgetpu")
    assert main(["bundle", "compile", str(tmp_path / "b")]) == 2
    assert "edgetpu_compiler is not on PATH" in capsys.readouterr().err


def test_a_compiled_bundle_names_and_hashes_both_models(tiny_run, tmp_path, stand_in_compiler, capsys):
    export(tiny_run, tmp_path / "b", representative=8, allow_drop=True, edgetpu=True)
    b = load_bundle(tmp_path / "b")
    target = b.card.edgetpu
    assert target.status == "compiled" and target.model_file == "model_edgetpu.tflite"
    assert target.compiler == "16.0.384591198" and target.operations == {"edgetpu": 64, "cpu": 0}
    assert b.card.model_file == "model.tflite" and (tmp_path / "b" / "model.tflite").is_file()  # the CPU fallback
    assert make_classifier(b).name == "cpu"  # auto on a machine without the delegate: the CPU model
    (tmp_path / "b" / "model_edgetpu.tflite").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="model_edgetpu.tflite: sha256"):
        load_bundle(tmp_path / "b")
    # `qc bundle compile` on a bundle exported without the compiler, and a report with CPU operations
    shutil.rmtree(tmp_path / "b")
    export(tiny_run, tmp_path / "c", representative=8, allow_drop=True)
    assert main(["bundle", "compile", str(tmp_path / "c")]) == 0
    assert load_bundle(tmp_path / "c").card.edgetpu.status == "compiled"
    capsys.readouterr()
    stand_in_compiler.write_text(MAPPED_REPORT.split("\nOperator")[0] + CPU_REPORT_TAIL)
    write_card(tmp_path / "c", {k: v for k, v in json.loads((tmp_path / "c" / "model.json").read_text()).items()
                                if k != "edgetpu"})
    assert main(["bundle", "compile", str(tmp_path / "c")]) == 2
    assert "would run 4 operation(s) on the CPU: HARD_SWISH (4): Operation not supported" in capsys.readouterr().err
    assert load_bundle(tmp_path / "c").card.edgetpu is None  # nothing changed


def test_the_report_parser_counts_a_fully_mapped_table():
    from training.edgetpu import parse_report

    full = parse_report(MAPPED_REPORT)
    assert (full.version, full.on_tpu, full.on_cpu, full.not_mapped) == ("16.0.384591198", 64, 0, [])
    partial = parse_report(MAPPED_REPORT.split("\nOperator")[0] + CPU_REPORT_TAIL)
    assert (partial.on_tpu, partial.on_cpu) == (60, 4) and partial.not_mapped == ["HARD_SWISH (4): Operation not supported"]
