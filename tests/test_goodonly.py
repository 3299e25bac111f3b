"""Good-only training (#29): painted defects, a threshold from good parts, a head replaced for labels later."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from edge.bundle import load_bundle
from edge.classifiers import make_classifier
from edge.decision import defect_scores
from qc.cli import main
from training import data, edgetpu, goodonly
from training.config import PAINTERS
from training.data import DatasetError, scan
from training.evaluate import GOOD_ONLY_METHOD, evaluate, good_quantile
from training.export import export
from training.train import TrainConfig, train

from .conftest import TINY


@pytest.fixture(scope="module")
def goods(synth32, tmp_path_factory):
    """The good photos of the tiny synthetic set alone: a line that has never seen a defect."""
    root = tmp_path_factory.mktemp("goods") / "data"
    for f in sorted(synth32.rglob("good/*.png")):
        (root / "good").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / "good" / f.name)
    return root


def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def good_run(goods, tmp_path_factory):
    before = _digest(goods)
    out = tmp_path_factory.mktemp("good-run") / "run"
    train(TrainConfig(data=goods, out=out, good_only=True, **TINY))
    assert _digest(goods) == before  # painted defects live in memory only
    return out


@pytest.mark.parametrize("painter", PAINTERS)
def test_each_painter_changes_the_view_where_its_mask_says(synth32, painter):
    img = data.read_rgb(sorted((synth32 / "train" / "good").glob("*.png"))[0])
    rng = np.random.default_rng(5)
    for _ in range(5):
        out, mask = goodonly.paint(rng, img, painter)
        assert out.shape == img.shape and out.dtype == np.uint8 and mask.any()
        changed = np.abs(out.astype(int) - img).max(axis=2) > 0
        assert changed[mask].mean() > 0.5
        if painter == "cutpaste":  # a pasted patch touches nothing outside itself
            assert not changed[~mask].any()


def test_a_good_class_alone_is_a_dataset_only_for_good_only_training(goods, synth32):
    with pytest.raises(DatasetError, match=r"at least one defect class is needed \(or train with --good-only\)"):
        scan(goods)
    alone = scan(goods, good_only=True)
    assert alone.classes == ["good", "defect"] and {it.label for it in alone.items} == {"good"}
    labelled = scan(synth32, good_only=True)  # defects of train and val are left out; the test's are kept
    assert labelled.classes == ["good", "defect"]
    assert {(it.split, it.label) for it in labelled.items if it.label != "good"} == {("test", "defect")}
    assert {it.kind for it in labelled.split("test") if it.label == "defect"} == {"scratch", "spot", "crack", "stain"}
    assert labelled.left_out == sum(1 for it in scan(synth32).items if it.label != "good" and it.split != "test")
    assert "defect photo(s) of the train and val splits left out" in labelled.summary()
    assert main(["data", str(goods)]) == 2 and main(["data", str(goods), "--good-only"]) == 0


def test_a_good_only_bundle_takes_its_threshold_from_good_scores(good_run, goods, tmp_path):
    record = json.loads((good_run / "config.json").read_text())
    assert record["classes"] == ["good", "defect"] and record["good_only"] and record["painters"] == list(PAINTERS)
    export(good_run, tmp_path / "b", representative=16, allow_drop=True)  # no `qc evaluate` needed
    bundle = load_bundle(tmp_path / "b")
    card = bundle.card
    assert card.labels == ["good", "defect"] and card.training["good_only"] is True
    assert card.threshold.method == GOOD_ONLY_METHOD and card.threshold.max_false_rejects == record["max_false_rejects"]
    ds = scan(goods, seed=record["seed"], good_only=True)
    val = data.load_views(ds, "val", 32)
    clf = make_classifier(bundle, "cpu")
    scores = np.array([defect_scores(clf.infer(x).scores, 0) for x in val.x])
    assert card.threshold.value == pytest.approx(good_quantile(scores, record["max_false_rejects"]), rel=1e-6)
    # the test split has no defects: the float-vs-int8 check and the references use painted ones
    assert "painted" in card.metrics["defects"]
    assert {r.label for r in card.references} == {"good", "defect"}
    assert edgetpu.check((tmp_path / "b" / "model.tflite").read_bytes()) == []  # the Edge TPU runs it whole


def test_evaluating_a_good_only_model_on_real_defects_reports_what_it_found(good_run, synth32, capsys):
    m = evaluate(good_run, synth32)
    assert m["good_only"] and m["threshold"]["method"] == GOOD_ONLY_METHOD and m["threshold"]["val_defects"] == 0
    assert 0 <= m["roc_auc"] <= 1 and set(m["recall_at_false_rejects"]) == {"0.01", "0.03"}
    assert set(m["recall_by_kind"]) == {"scratch", "spot", "crack", "stain"}
    assert "trained on good parts only" in (good_run / "eval" / "report.html").read_text()
    assert main(["evaluate", str(good_run), "--data", str(synth32)]) == 0
    assert "recall at 1% false rejects" in capsys.readouterr().out


def test_init_from_a_good_only_run_keeps_its_backbone_under_a_new_head(good_run, synth32, tmp_path, capsys):
    from training import model as models

    rec = train(TrainConfig(data=synth32, out=tmp_path / "labelled", init_from=good_run,
                            **(TINY | {"epochs": 1, "steps_per_epoch": 1})))
    assert "its backbone kept" in capsys.readouterr().out
    assert rec["classes"] == ["good", "crack", "scratch", "spot", "stain"] and not rec["good_only"]
    old, new = models.load(good_run), models.load(tmp_path / "labelled")
    fresh = models.build(rec["arch"], 5, 32, rec["alpha"])
    assert new.get_layer("head").get_weights()[0].shape[1] == 5

    def kernels(net):
        return [w.numpy() for w in net.get_layer("backbone").weights if w.path.endswith("kernel")]

    moved = max(np.abs(a - b).max() for a, b in zip(kernels(new), kernels(old)))
    apart = max(np.abs(a - b).max() for a, b in zip(kernels(fresh), kernels(old)))
    assert moved < 0.01 < apart  # one fine-tuning step away from the good-only backbone, not a new one
