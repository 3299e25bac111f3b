"""What `qc train` chooses from the data, tiles at the photo's resolution on both sides, and a reject threshold
that does not hinge on one image."""

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from edge import tiles
from edge.bundle import load_bundle
from training import data, recipe
from training.config import TrainConfig
from training.errors import TrainingError
from training.evaluate import choose_threshold

from .test_pipeline import make_runtime


@pytest.mark.parametrize("shape", [(50, 40), (96, 96), (97, 300), (324, 270), (1080, 1920), (20, 500)])
def test_tiles_cover_every_pixel_of_a_frame_and_overlap(shape):
    size, overlap = 96, 24
    img = np.arange(shape[0] * shape[1], dtype=np.int64).reshape(shape)
    cut, at = tiles.cut(img, size, overlap)
    seen = np.zeros(shape, int)
    for tile, (x, y) in zip(cut, at):
        h, w = min(size, shape[0] - y), min(size, shape[1] - x)
        assert np.array_equal(tile[:h, :w], img[y:y + h, x:x + w])  # the frame's own pixels, not resized
        seen[y:y + h, x:x + w] += 1
    assert seen.min() >= 1
    for axis in (0, 1):
        s = tiles.starts(shape[axis], size, overlap)
        assert s[0] == 0 and (len(s) == 1 or s[-1] + size == shape[axis])
        assert all(b - a <= size - overlap for a, b in zip(s, s[1:]))  # neighbours share at least the overlap
    with pytest.raises(ValueError, match="overlap"):
        tiles.starts(300, 96, 96)


def test_a_box_in_a_tile_maps_back_to_the_frame_exactly():
    shape, (x, y, w, h) = (250, 330), (201, 143, 9, 13)
    mask = np.zeros(shape, np.uint8)
    mask[y:y + h, x:x + w] = 1
    cut, at = tiles.cut(mask, 96, 24)
    whole = [i for i, t in enumerate(cut) if t.sum() == w * h]
    assert whole  # with 24 px of overlap a 13 px defect lies whole in some tile
    for i in whole:
        ys, xs = np.nonzero(cut[i])
        in_tile = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        assert tiles.to_frame(in_tile, at[i], shape) == [x, y, w, h]
        assert tiles.to_frame(in_tile, at[i], shape, offset=(40, 7)) == [x + 40, y + 7, w, h]  # the ROI's place
    # a frame smaller than a tile is padded; a box reaching into the padding is clipped to the frame
    assert tiles.to_frame([30, 20, 60, 70], (0, 0), (50, 40)) == [30, 20, 10, 30]


def test_the_worst_tile_speaks_for_its_photo():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.99, 0.01], [0.7, 0.3]])
    owner = np.array([0, 0, 0, 1, 1])
    top, pick = tiles.worst(probs, owner, 2, good_index=0)
    assert pick.tolist() == [1, 4] and np.array_equal(top, probs[[1, 4]])
    with pytest.raises(ValueError, match="no tile"):
        tiles.worst(probs, owner, 3, good_index=0)


def test_a_tile_is_a_defect_when_it_holds_the_defect_and_is_left_out_when_it_holds_a_sliver():
    mask = np.zeros((4, 10, 10), bool)
    mask[0, 2:8, 2:8] = True  # 36 px: the whole defect
    mask[1, 0:6, 0:2] = True  # 12 px: a sliver of it at the tile's edge
    assert data.tile_labels(mask, 36, label=3, good=0).tolist() == [3, -1, 0, 0]
    assert data.tile_labels(mask, 36, label=0, good=0).tolist() == [0, 0, 0, 0]  # a good photo's tiles are good
    assert data.tile_labels(mask, 0, label=3, good=0).tolist() == [-1] * 4  # no mask to say where the defect is


def _logit_normal(rng, mean, sd, n):
    return 1 / (1 + np.exp(-rng.normal(mean, sd, n)))


def test_the_threshold_does_not_hinge_on_the_worst_validation_defect():
    rng = np.random.default_rng(0)
    defects = np.append(_logit_normal(rng, 2.5, 1.2, 59), 0.02)  # 60 defects, one of them scored as good
    goods = _logit_normal(rng, -3.0, 1.0, 143)
    scores = np.concatenate([defects, goods])
    is_defect = np.arange(len(scores)) < 60
    with_worst = choose_threshold(scores, is_defect, 0.99)
    without = choose_threshold(np.delete(scores, 59), np.delete(is_defect, 59), 0.99)
    assert abs(with_worst - without) < 0.02  # the stated tolerance
    ranked = np.sort(defects)
    assert ranked[1] - ranked[0] > 0.1  # the rule "highest threshold that keeps every defect" would jump with it
    fresh = _logit_normal(np.random.default_rng(1), 2.5, 1.2, 100_000)
    assert (fresh >= with_worst).mean() >= 0.985  # and the fitted tail still catches the defects it stands for


def test_the_false_reject_budget_buys_recall_and_is_kept_when_the_classes_separate():
    rng = np.random.default_rng(2)
    goods = _logit_normal(rng, -4.0, 1.0, 200)
    # most defects pinned at the top (label smoothing caps them), a few hard ones below: a fit of the median
    # and spread alone would put the threshold in the pile
    defects = np.concatenate([np.full(220, 0.98), [0.4, 0.77, 0.92, 0.93]])
    scores = np.concatenate([defects, goods])
    is_defect = np.arange(len(scores)) < len(defects)
    t = choose_threshold(scores, is_defect, 0.99, max_false_rejects=0.02)
    assert (goods >= t).mean() <= 0.02 + 1 / len(goods)
    assert (defects >= t).all()
    assert choose_threshold(scores, is_defect, 0.99, max_false_rejects=0.0) > t  # no budget: a higher threshold


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory):
    """Twelve 200 x 240 px photos, half with a 7 px spot and its mask: defects a resize to 96 px would lose."""
    root = tmp_path_factory.mktemp("large") / "data"
    rng = np.random.default_rng(4)
    for label in ("good", "spot"):
        (root / label).mkdir(parents=True)
        (root / "masks" / label).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            img = rng.integers(90, 140, (200, 240), np.uint8)
            mask = np.zeros_like(img)
            if label == "spot":
                x, y = rng.integers(10, 220), rng.integers(10, 180)
                cv2.circle(img, (int(x), int(y)), 3, 20, -1)
                cv2.circle(mask, (int(x), int(y)), 3, 255, -1)
            cv2.imwrite(str(root / label / f"{i}.png"), img)
            cv2.imwrite(str(root / "masks" / label / f"{i}.png"), mask)
    return root


def test_the_recipe_tiles_small_defects_in_large_photos_and_not_small_photos(large_photos, synth32, tmp_path):
    base = dict(out=tmp_path / "r")
    large = recipe.choose(data.scan(large_photos), TrainConfig(data=large_photos, **base))
    assert large.tiling is not None and (large.tiling.size, large.tiling.overlap) == (96, 24)
    assert large.cfg.input_size == 96 and large.cfg.augment.translation == 0.05
    assert "8 training images of about 240 x 200 px" in large.reasons[0] and "tiles" in large.reasons[0]
    small = recipe.choose(data.scan(synth32), TrainConfig(data=synth32, **base))
    assert small.tiling is None and small.cfg.augment.translation == 0.2 and "whole photos" in small.reasons[0]
    # each choice gives way to its flag
    off = recipe.choose(data.scan(large_photos), TrainConfig(data=large_photos, tiles="off", **base))
    assert off.tiling is None
    sized = TrainConfig(data=large_photos, input_size=64, augment={"translation": 0.1}, **base)
    sized = recipe.choose(data.scan(large_photos), sized)
    assert sized.tiling.size == 64 and sized.cfg.augment.translation == 0.1
    assert recipe.choose(data.scan(large_photos), TrainConfig(data=large_photos, min_defect_px=40, **base)).tiling is None
    with pytest.raises(TrainingError, match="masks"):
        recipe.choose(data.scan(_without_masks(large_photos, tmp_path)), TrainConfig(data=large_photos, tiles="on", **base))


def _without_masks(root, tmp_path):
    import shutil

    copy = tmp_path / "nomask"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("masks"))
    return copy


def test_the_schedule_is_optimizer_steps_so_fewer_images_get_more_epochs():
    cfg = TrainConfig(data=".", out=".")
    few, said = recipe.schedule(cfg, 939, "images")
    many, _ = recipe.schedule(cfg, 2100, "images")
    assert (few.epochs, many.epochs) == (120, 55)  # 30 and 66 steps an epoch at batch 32: 3600 steps either way
    assert "3600 steps" in said and "120 epochs of 939 images" in said
    assert recipe.schedule(TrainConfig(data=".", out=".", epochs=7), 939, "images")[0].epochs == 7
    assert recipe.schedule(TrainConfig(data=".", out=".", steps=300), 939, "images")[0].epochs == 10


def test_a_tiled_model_trains_exports_and_the_box_boxes_parts_in_frame_coordinates(large_photos, tmp_path, capsys):
    from training.export import export
    from training.train import train

    run = tmp_path / "run"
    rec = train(TrainConfig(data=large_photos, out=run, input_size=32, alpha=0.35, epochs=1, steps_per_epoch=2,
                            batch_size=16, seed=3))
    printed = capsys.readouterr().out
    assert "recipe: 8 training images" in printed and "32 px tiles" in printed and rec["tiling"] == {"size": 32, "overlap": 8}
    bundle = tmp_path / "b"
    export(run, bundle, representative=16, allow_drop=True)
    assert load_bundle(bundle).tiling.size == 32
    assert json.loads((bundle / "model.json").read_text())["tiling"] == {"size": 32, "overlap": 8}
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(sorted((large_photos / "spot").glob("*.png"))[:3]):
        (frames / f"{i}.png").write_bytes(f.read_bytes())
    rt, tel = make_runtime(bundle, frames, tmp_path, decision__threshold=0.0, pipeline__roi=[8, 4, 200, 150])
    seen = []

    class Counting:  # each worker's interpreter, counting what it is given
        def __init__(self, inner):
            self.inner, self.name = inner, inner.name

        def infer(self, rgb):
            seen.append(rgb.shape)
            return self.inner.infer(rgb)

    rt.model = replace(rt.model, classifiers=tuple(Counting(c) for c in rt.model.classifiers))
    rt.run(on_stats=lambda line: None)
    assert len(tel.inspections) == 3, tel.inspections
    assert [e['reason'] for e in tel.inspections] == ['defect'] * 3, [(e['reason'], e.get('error')) for e in tel.inspections]
    per_frame = len(tiles.corners((150, 200), 32, 8))
    assert len(seen) == 3 * per_frame and set(seen) == {(32, 32, 3)}  # every tile of the ROI, one at a time
    for e in tel.inspections:
        x, y, w, h = e["box"]
        assert e["decision"] == "reject" and 8 <= x and 4 <= y and x + w <= 208 and y + h <= 154 and w <= 32 and h <= 32


def test_defect_tiles_are_repeated_until_they_are_a_third_of_the_training_tiles():
    y = np.array([0] * 90 + [2] * 6 + [3] * 4)
    views = data.Views(np.arange(100)[:, None], y, None, np.ones(100, bool), np.arange(100), np.array([0, 2]))
    more, said = recipe.oversample(views, good=0)
    defects = (more.y != 0).sum()
    assert defects == 10 * 5 and abs(defects / len(more.y) - 1 / 3) < 0.05  # 45 / (1/3 * 90 / (2/3)) -> 5 times
    assert np.array_equal(more.x[:, 0], more.owner) and "10 defect tiles taken 5 times" in said
    assert recipe.oversample(more, good=0) == (more, None)  # already a third: left alone
