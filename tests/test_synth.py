import hashlib
import json

import cv2
import numpy as np
import pytest

from edge.errors import QCError
from training.synth import DEFECTS, SynthConfig, generate


def test_same_seed_gives_byte_identical_output(tmp_path):
    a = generate(tmp_path / "a", SynthConfig(count=30, seed=7, size=48))
    b = generate(tmp_path / "b", SynthConfig(count=30, seed=7, size=48))
    c = generate(tmp_path / "c", SynthConfig(count=30, seed=8, size=48))
    assert a["files"] == b["files"]
    assert a["files"] != c["files"]
    for rel, digest in a["files"].items():
        assert hashlib.sha256((tmp_path / "a" / rel).read_bytes()).hexdigest() == digest


def test_layout_counts_and_masks(synth32):
    manifest = json.loads((synth32 / "dataset.json").read_text())
    assert manifest["classes"] == ["good", *DEFECTS]
    assert sum(sum(c.values()) for c in manifest["counts"].values()) == 120
    for split in ("train", "val", "test"):
        for cls in manifest["classes"]:
            files = list((synth32 / split / cls).glob("*.png"))
            assert len(files) == manifest["counts"][split][cls] > 0
            for f in files[:3]:
                img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
                assert img.shape == (32, 32)
                mask = synth32 / "masks" / cls / f.name
                assert mask.exists() == (cls != "good")
                if cls != "good":
                    assert cv2.imread(str(mask), 0).max() == 255


def test_defects_are_not_found_by_a_global_brightness_threshold(tmp_path):
    generate(tmp_path / "d", SynthConfig(count=200, seed=1, size=64))
    means, is_defect = [], []
    for f in sorted((tmp_path / "d").glob("*/*/*.png")):
        if f.parts[-3] == "masks":
            continue
        means.append(cv2.imread(str(f), 0).mean())
        is_defect.append(f.parent.name != "good")
    means, is_defect = np.array(means), np.array(is_defect)
    # ROC AUC of mean brightness as a defect score, by the rank formula: near 0.5 means useless
    ranks = means.argsort().argsort() + 1
    n_pos, n_neg = is_defect.sum(), (~is_defect).sum()
    auc = (ranks[is_defect].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    assert 0.3 < auc < 0.7, auc


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"count": 0}, "--count"),
        ({"count": 10}, "at least 3 images"),
        ({"classes": ["scratch", "dent"]}, "dent"),
        ({"size": 16}, "too small"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(QCError, match=message):
        generate(tmp_path / "x", SynthConfig(**kwargs))
    assert not (tmp_path / "x").exists()


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(QCError, match="not empty"):
        generate(tmp_path, SynthConfig(count=30))
    assert (tmp_path / "keep.txt").read_text() == "mine"
