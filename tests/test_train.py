import json

import keras
import numpy as np
import pytest

import training.train
from edge.errors import QCError
from qc.cli import main
from training import model as models
from training import recipe
from training.config import PLATEAU_PATIENCE, TrainConfig
from training.evaluate import (
    evaluate,
    explain,
    pointing_game,
    recall_interval,
)
from training.train import (
    DefectRecall,
    _class_loss,
    _optimizer,
    _rate,
    balanced_class_weights,
    train,
)

from .conftest import TINY


def test_run_folder_has_model_history_curves_and_config(tiny_run, synth32):
    assert (tiny_run / "model.keras").is_file() and (tiny_run / "training-curves.png").stat().st_size > 1000
    history = json.loads((tiny_run / "history.json").read_text())
    assert len(history["loss"]) == 2 and len(history["val_defect_recall"]) == 2
    cfg = json.loads((tiny_run / "config.json").read_text())
    from training.data import scan

    assert cfg["dataset"]["manifest_sha256"] == scan(synth32, seed=cfg["seed"]).manifest_sha256
    assert cfg["classes"][0] == "good" and cfg["arch"] == "mobilenet_v3_small_minimalistic" and cfg["augment"]["flip"] is True


def test_same_seed_repeats_the_run(tiny_run, synth32, tmp_path, capsys):
    again = train(TrainConfig(data=synth32, out=tmp_path / "again", **TINY))
    first = json.loads((tiny_run / "history.json").read_text())
    second = json.loads((tmp_path / "again" / "history.json").read_text())
    assert again["epochs_run"] == 2
    np.testing.assert_allclose(first["loss"], second["loss"], rtol=1e-5)
    # the saved model's recall on val is recorded, and a model that misses most defects is called out
    from training.data import load_arrays, scan

    x, y, _ = load_arrays(scan(synth32, seed=TINY["seed"]), "val", 32)
    flagged = models.load(tmp_path / "again").predict(x, verbose=0).argmax(axis=1) != 0
    recall = flagged[y != 0].mean()
    assert again["val_defect_recall"] == pytest.approx(recall, abs=1e-4)
    assert ("warning: the model finds" in capsys.readouterr().out) == (recall < 0.5)


def test_init_from_continues_and_checks_classes(tiny_run, synth32, tmp_path):
    rec = train(TrainConfig(data=synth32, out=tmp_path / "more", init_from=tiny_run, **(TINY | {"epochs": 1})))
    assert rec["init_from"] == str(tiny_run)
    from training.synth import SynthConfig, generate

    other = tmp_path / "other"
    generate(other, SynthConfig(count=40, seed=1, size=32, classes=["spot"]))
    with pytest.raises(QCError, match=r"trained on classes \['good', 'crack', 'scratch', 'spot', 'stain'\].*\['good', 'spot'\]"):
        train(TrainConfig(data=other, out=tmp_path / "bad", init_from=tiny_run, **TINY))


def test_config_file_typo_names_the_key(tmp_path, capsys, synth32):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"data: {synth32}\nout: {tmp_path / 'r'}\nlearning_rat: 0.1\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "learning_rat" in err and "Extra inputs are not permitted" in err


def test_translation_option_overrides_only_the_shift_of_the_config_file(tmp_path, synth32, monkeypatch):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"data: {synth32}\nout: {tmp_path / 'r'}\naugment: {{flip: false}}\n")
    given = []  # what `qc train` hands the trainer, once merged and checked
    monkeypatch.setattr(training.train, "train", lambda c: given.append(c) or {"out": c.out, "epochs_run": 0,
                                                                                "train_seconds": 0})
    assert main(["train", "--config", str(cfg), "--translation", "0.05", "--painters", "spot", "cutpaste"]) == 0
    augment = given[0].augment
    assert augment.translation == 0.05 and augment.flip is False and augment.zoom == 0.1
    assert given[0].painters == ["spot", "cutpaste"] and given[0].data == synth32
    with pytest.raises(SystemExit, match="2"):  # not a painter: refused with the usage line
        main(["train", "--config", str(cfg), "--painters", "dent"])


def test_local_weights_file_is_loaded(tmp_path):
    a = models.build("mobilenet_v2", 3, 32, 0.35)
    path = tmp_path / "backbone.weights.h5"
    a.get_layer("backbone").save_weights(path)
    b = models.build("mobilenet_v2", 3, 32, 0.35, weights=str(path))
    for wa, wb in zip(a.get_layer("backbone").weights, b.get_layer("backbone").weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    with pytest.raises(QCError, match="not 'none', 'imagenet' or an existing weights file"):
        models.build("mobilenet_v2", 3, 32, 0.35, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(QCError, match=r"cannot build mobilenet_v3_small .*weights=.*backbone\.weights\.h5"):
        models.build("mobilenet_v3_small", 3, 32, 0.35, weights=str(path))  # another architecture's weights


def test_mobilenet_v3_builds_with_preprocessing_inside():
    net = models.build("mobilenet_v3_small", 2, 32, 0.75)
    out = net(np.full((1, 32, 32, 3), 255.0, np.float32))
    assert out.shape == (1, 2) and abs(float(np.sum(out)) - 1) < 1e-5
    assert "preprocess" not in {layer.name for layer in net.layers}


def test_standardize_removes_brightness_and_contrast_from_a_sampled_grid():
    from training.model import Standardize

    rng = np.random.default_rng(0)
    x = rng.uniform(60, 120, (2, 224, 224, 3)).astype(np.float32)
    y = np.asarray(Standardize()(x))
    assert np.abs(y.mean(axis=(1, 2, 3))).max() < 0.05 and np.abs(y.std(axis=(1, 2, 3)) - 1).max() < 0.05
    # the same part under a brighter, harder lamp looks the same to the network
    assert np.abs(np.asarray(Standardize()(1.5 * x + 40)) - y).max() < 0.05


def test_optimizers_and_balanced_class_weights():
    base = dict(data=".", out=".")
    assert isinstance(_optimizer(TrainConfig(**base, optimizer="sgd"), 0.1), keras.optimizers.SGD)
    assert _optimizer(TrainConfig(**base, optimizer="sgd", momentum=0.8), 0.1).momentum == 0.8
    assert isinstance(_optimizer(TrainConfig(**base, optimizer="rmsprop"), 0.1), keras.optimizers.RMSprop)
    w = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert w[1] == 3 * w[0]


def test_label_smoothing_spreads_the_target():
    loss = _class_loss(TrainConfig(data=".", out=".", label_smoothing=0.1))
    got = float(np.asarray(loss(np.array([0]), np.array([[0.9, 0.1]], np.float32)))[0])
    assert got == pytest.approx(-(0.95 * np.log(0.9) + 0.05 * np.log(0.1)), rel=1e-4)
    assert TrainConfig(data=".", out=".").label_smoothing == 0.1  # the default recipe smooths
    assert _class_loss(TrainConfig(data=".", out=".", label_smoothing=0)) == "sparse_categorical_crossentropy"


def test_patience_lets_a_cosine_run_anneal_to_its_end():
    assert recipe.schedule(TrainConfig(data=".", out=".", epochs=30), 100, "images")[0].patience == 30
    plateau = TrainConfig(data=".", out=".", lr_schedule="plateau")
    assert recipe.schedule(plateau, 100, "images")[0].patience == PLATEAU_PATIENCE
    assert recipe.schedule(TrainConfig(data=".", out=".", patience=3), 100, "images")[0].patience == 3


def test_alpha_default_follows_the_architecture():
    assert TrainConfig(data=".", out=".").alpha == 1.0  # MobileNetV3-Small minimalistic, the default
    assert TrainConfig(data=".", out=".", arch="mobilenet_v2").alpha == 0.35
    assert TrainConfig(data=".", out=".", arch="mobilenet_v2", alpha=0.5).alpha == 0.5


def test_cosine_schedule_and_label_smoothing_train(tiny_run, synth32, tmp_path, monkeypatch):
    cfg = TrainConfig(data=synth32, out=tmp_path / "cos", **(TINY | {"lr_schedule": "cosine", "label_smoothing": 0.1}))
    rate = _rate(cfg, 0.01, epochs=4, steps_per_epoch=10)
    assert float(rate(0)) == pytest.approx(0.01) and float(rate(20)) == pytest.approx(0.005)
    assert float(rate(40)) == pytest.approx(0.0, abs=1e-9)
    assert _rate(TrainConfig(data=".", out=".", lr_schedule="plateau"), 0.01, 4, 10) == 0.01  # the callback cuts it
    rec = json.loads((tiny_run / "config.json").read_text())  # trained with the defaults: cosine, smoothed
    assert rec["lr_schedule"] == "cosine" and rec["label_smoothing"] == 0.1
    # without masks the classifier itself is compiled with the smoothed loss, and saved so
    plain = TrainConfig(data=synth32, out=tmp_path / "plain",
                        **(TINY | {"label_smoothing": 0.1, "mask_supervision": 0, "lr_schedule": "plateau"}))
    made = []  # (training?, class weights) of each dataset train() builds
    real = training.train.make_dataset
    monkeypatch.setattr(training.train, "make_dataset",
                        lambda x, y, batch, shuffle, *a, **kw: made.append((shuffle, kw.get("class_weights")))
                        or real(x, y, batch, shuffle, *a, **kw))
    train(plain)
    # the val loss that early stopping and the plateau cut watch is weighted like the training loss
    (_, w_train), (_, w_val) = sorted(made, key=lambda m: not m[0])
    assert w_train and w_val == w_train and w_train[0] < w_train[1]
    assert models.load(plain.out).output.shape[-1] == 5


def test_cam_model_matches_the_classifier(tiny_run):
    net = models.load(tiny_run)
    cam_net = models.with_cam(net)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    probs, cam = cam_net.predict(x, verbose=0)
    np.testing.assert_allclose(probs, net.predict(x, verbose=0), atol=1e-5)
    assert cam.shape[-1] == probs.shape[-1]
    np.testing.assert_allclose(cam.sum(-1), 1, atol=1e-5)


def test_the_recall_a_threshold_can_be_trusted_with_narrows_with_more_defects():
    """Clopper-Pearson: every one of n defects caught vouches for a recall of at least 0.025 ** (1 / n)."""
    few, many = np.ones(59), np.ones(590)
    lo, hi = recall_interval(few, few.astype(bool), 0.5)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 59), abs=1e-4) and lo < 0.94
    assert recall_interval(many, many.astype(bool), 0.5)[0] > 0.99
    scores = np.array([0.9] * 98 + [0.1, 0.1])  # two of 100 below the threshold: 0.98 lies inside
    lo, hi = recall_interval(scores, np.ones(100, bool), 0.5)
    assert lo < 0.98 < hi < 1.0


def test_pointing_game_counts_peaks_inside_masks():
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 0, 0] = 1  # peak in the top-left cell
    maps[1, 3, 3] = 1  # peak in the bottom-right cell
    maps[2, 0, 1] = 1  # peak in the cell right of the top-left one
    masks = np.zeros((3, 16, 16), bool)
    masks[:, 1:3, 1:3] = True  # every defect lies in the top-left cell (pixels 0-3)
    assert pointing_game(maps, masks) == pytest.approx(1 / 3)


def test_evaluate_writes_metrics_plots_and_report(tiny_run, synth32):
    m = evaluate(tiny_run, synth32, target_recall=0.9)
    out = tiny_run / "eval"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["threshold"]["value"] == m["threshold"]["value"]
    assert saved["threshold"]["val"]["recall"] >= 0.9  # by construction, on the split it was chosen on
    assert len(saved["confusion_matrix"]) == 5 and set(saved["per_class"]) == set(saved["classes"])
    assert 0 <= saved["roc_auc"] <= 1 and 0 <= saved["pointing_game"]["hit_rate"] <= 1
    for png in ("confusion.png", "roc.png", "pr.png", "scores.png"):
        assert (out / png).stat().st_size > 1000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5
    assert "Reject when defect score" in page


def test_default_backbone_bench_counts_finished_runs_and_trains_what_is_missing(tiny_run, synth32, tmp_path,
                                                                                monkeypatch):
    """The training benchmarks reuse finished runs of the same recipe and data (`qc train` / `qc evaluate` runs
    count: the backbone comparison is about 2 h of training on two cores) and check that both backbones were
    compared on the same data."""
    import shutil

    import bench.default_backbone as bench
    import bench.train_quality as quality

    evaluate(tiny_run, synth32, target_recall=0.9)
    cfg = json.loads((tiny_run / "config.json").read_text())
    archs, seed, runs = [cfg["arch"], "mobilenet_v3_small"], cfg["seed"], tmp_path / "runs"
    recipe = {k: v for k, v in TINY.items() if k != "seed"}

    def leave_run(out, **recipe):  # what `qc train` and `qc evaluate` leave, without the training
        shutil.copytree(tiny_run, out, dirs_exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg | recipe))

    for arch in archs:
        leave_run(runs / f"synthetic-{arch}-s{seed}", arch=arch)
    trained = []
    monkeypatch.setattr(quality, "train", lambda c: trained.append(c.out.name) or leave_run(
        c.out, **c.model_dump(mode="json", exclude={"data", "out"})))
    monkeypatch.setattr(quality, "evaluate", lambda *args, **kwargs: None)
    variants = {"synthetic": (synth32, {arch: {"arch": arch} for arch in archs})}
    r = bench.compare(runs, variants, seeds=(seed,), **recipe)
    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert trained == [] and r["synthetic"]["same_data_for_every_variant"] is True
    assert r["synthetic"][archs[1]]["mean"]["accuracy"] == round(metrics["accuracy"], 4)
    (runs / f"synthetic-{archs[0]}-s{seed}" / "eval" / "metrics.json").unlink()  # evaluation never finished
    bench.compare(runs, variants, seeds=(seed,), **recipe)
    assert trained == [f"synthetic-{archs[0]}-s{seed}"]
    bench.compare(runs, variants, seeds=(seed,), **recipe | {"epochs": 3})  # another recipe
    assert len(trained) == 3


def test_evaluate_refuses_other_classes(tiny_run, tmp_path):
    from training.synth import SynthConfig, generate

    generate(tmp_path / "d", SynthConfig(count=40, seed=1, size=32, classes=["spot", "stain"]))
    with pytest.raises(QCError, match=r"trained on classes .*crack.*but .* has classes \['good', 'spot', 'stain'\]"):
        evaluate(tiny_run, tmp_path / "d")


def test_explain_writes_overlays(tiny_run, synth32, tmp_path):
    imgs = sorted((synth32 / "test" / "spot").glob("*.png"))[:2]
    out = explain(tiny_run, imgs, tmp_path / "x")
    assert [p.name for p in out] == [f"{i.stem}_cam.png" for i in imgs]
    assert all(p.stat().st_size > 1000 for p in out)


def test_pretrained_weights_train_the_head_then_fine_tune(tmp_path, synth32):
    weights = tmp_path / "backbone.weights.h5"
    models.build(TrainConfig(data=".", out=".").arch, 5, 32, TINY["alpha"]).get_layer("backbone").save_weights(weights)
    rec = train(TrainConfig(data=synth32, out=tmp_path / "ft", weights=str(weights), head_epochs=1,
                            **(TINY | {"epochs": 1})))
    history = json.loads((tmp_path / "ft" / "history.json").read_text())
    assert history["phase"] == ["head", "fine-tune"]
    assert rec["weights"] == str(weights)


def test_cam_targets_follow_masks_and_ignore_unmasked_defects():
    import tensorflow as tf

    from training.input_pipeline import cam_targets

    masks = np.zeros((3, 8, 8, 1), np.float32)
    masks[0, :4, :4] = 1  # a defect in the top-left cell of a 2x2 grid
    labels = tf.constant([2, 0, 3])
    has_mask = tf.constant([True, False, False])
    t = cam_targets(tf.constant(masks), labels, has_mask, grid=2, good_index=0).numpy()
    assert t[0].tolist() == [[2, 0], [0, 0]]
    assert t[1].tolist() == [[0, 0], [0, 0]]  # good part: every cell is good
    assert t[2].tolist() == [[-1, -1], [-1, -1]]  # a defect without a mask: the map is not told


def test_mask_supervision_trains_both_outputs(tiny_run):
    history = json.loads((tiny_run / "history.json").read_text())
    assert "cam_loss" in history and "probs_loss" in history  # synth32 has masks: the map was supervised


def test_defect_recall_counts_defective_parts_flagged_as_any_defect():
    m = DefectRecall(good_index=0)
    m.update_state(np.array([1, 2, 0]), np.array([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7], [0.1, 0.9, 0.0]]))
    m.update_state(np.array([2]), np.array([[0.1, 0.8, 0.1]]))  # the wrong defect class still rejects the part
    assert float(m.result()) == pytest.approx(2 / 3)
    m.reset_state()
    m.update_state(np.array([0]), np.array([[0.2, 0.8, 0.0]]))
    assert float(m.result()) == 1.0  # no defective parts: nothing missed
