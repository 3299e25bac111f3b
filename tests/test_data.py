import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data import DatasetError, load_arrays, read_rgb, scan

TILES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile"


def _copy_tiles(dst: Path, per_class: int = 6, classes=("good", "blowhole", "crack")) -> Path:
    """A small copy of the real magnetic-tile photos (class layout, with masks)."""
    assert TILES.is_dir(), f"the shared datasets are expected beside the repository, at {TILES}"
    for cls in classes:
        (dst / cls).mkdir(parents=True)
        (dst / "masks" / cls).mkdir(parents=True)
        for f in sorted((TILES / cls).glob("*.jpg"))[:per_class]:
            shutil.copy(f, dst / cls / f.name)
            shutil.copy(TILES / "masks" / cls / f"{f.stem}.png", dst / "masks" / cls / f"{f.stem}.png")
    return dst


def test_split_layout_with_summary(synth32):
    ds = scan(synth32)
    assert ds.layout == "split" and ds.classes[0] == "good"
    assert sum(ds.counts()["test"].values()) == len(ds.split("test"))
    text = ds.summary()
    assert "train" in text and "imbalance" in text and "width 32-32" in text
    assert all(it.mask is not None for it in ds.items if it.label != "good")


def test_real_photos_class_layout_is_split_stratified_and_repeatable(tmp_path):
    root = _copy_tiles(tmp_path / "tiles")
    a, b, c = scan(root, seed=1), scan(root, seed=1), scan(root, seed=2)
    assert a.layout == "class" and a.classes == ["good", "blowhole", "crack"]
    assert [it.split for it in a.items] == [it.split for it in b.items]
    assert [it.split for it in a.items] != [it.split for it in c.items]
    for split, n in (("train", 4), ("val", 1), ("test", 1)):
        assert a.counts()[split] == {"good": n, "blowhole": n, "crack": n}
    assert all(it.mask is not None and it.mask.parent.name == it.label for it in a.items)
    x, y, masks = load_arrays(a, "train", 48, with_masks=True)
    assert x.shape == (12, 48, 48, 3) and x.dtype == np.uint8 and sorted(set(y)) == [0, 1, 2]
    assert masks[y == 1].any()  # blowholes have pixels marked
    assert "width" in a.summary() and "1 distinct" not in a.summary()  # mixed sizes are reported


def test_mvtec_layout_maps_defects_to_classes(tmp_path, synth32):
    root = tmp_path / "bottle"
    srcs = {"good": sorted((synth32 / "train" / "good").glob("*.png"))}
    srcs["spot"] = sorted((synth32 / "train" / "spot").glob("*.png"))
    for i, f in enumerate(srcs["good"][:8]):
        dst = root / ("train" if i < 5 else "test") / "good"
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst / f"{i:03d}.png")
    (root / "test" / "spot").mkdir(parents=True)
    (root / "ground_truth" / "spot").mkdir(parents=True)
    for i, f in enumerate(srcs["spot"][:5]):
        shutil.copy(f, root / "test" / "spot" / f"{i:03d}.png")
        shutil.copy(synth32 / "masks" / "spot" / f.name, root / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    ds = scan(root)
    assert ds.layout == "mvtec" and ds.classes == ["good", "spot"]
    assert {it.split for it in ds.items if it.label == "spot"} == {"train", "val", "test"}
    assert all(it.mask is not None for it in ds.items if it.label == "spot")


def _tiny_class_dataset(root: Path, classes=("good", "dent"), n=4) -> Path:
    import cv2

    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / cls / f"{i}.png"), np.full((8, 8), 40 * i, np.uint8))
    return root


def test_bad_folders_get_errors_that_name_them(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        scan(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no 'good' class"):
        scan(_tiny_class_dataset(tmp_path / "nogood", ("ok", "dent")))
    with pytest.raises(DatasetError, match="at least one defect class"):
        scan(_tiny_class_dataset(tmp_path / "single", ("good",)))


def test_split_with_a_class_absent(tmp_path, synth32):
    root = tmp_path / "d"
    shutil.copytree(synth32, root)
    shutil.rmtree(root / "val" / "crack")
    with pytest.raises(DatasetError, match=r"split 'val' has no images of class\(es\) \['crack'\]"):
        scan(root)


def test_truncated_image_fails_unless_skipped(tmp_path):
    root = _tiny_class_dataset(tmp_path / "d", n=5)
    bad = root / "dent" / "2.png"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(DatasetError, match=r"(?s)1 unreadable image.*dent/2\.png: cannot decode"):
        scan(root)
    ds = scan(root, skip_bad=True)
    assert len(ds.items) == 9 and [p.name for p, _ in ds.bad] == ["2.png"]
    assert "skipped 1" in ds.summary()


def test_non_image_file_is_named(tmp_path):
    root = _tiny_class_dataset(tmp_path / "d")
    (root / "good" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="notes.txt"):
        scan(root)
    assert len(scan(root, skip_bad=True).items) == 8


def test_manifest_hash_tracks_content(tmp_path):
    root = _tiny_class_dataset(tmp_path / "d")
    h1 = scan(root).manifest_sha256
    assert scan(root).manifest_sha256 == h1
    (root / "dent" / "0.png").write_bytes((root / "dent" / "1.png").read_bytes())
    assert scan(root).manifest_sha256 != h1


def test_training_and_the_box_decode_a_file_to_the_same_pixels(synth32, tmp_path):
    """One decoder: a dataset image as training loads it is the frame the box would inspect."""
    from edge.preprocess import prepare, resize
    from edge.sources import Frame

    gray_png = sorted((synth32 / "train" / "good").glob("*.png"))[0]
    colour_jpg = tmp_path / "c.jpg"
    rgb = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    cv2.imwrite(str(colour_jpg), rgb)
    for path in (gray_png, colour_jpg, sorted((TILES / "blowhole").glob("*.jpg"))[0]):
        trained = read_rgb(path)
        frame = Frame(0, 0.0, None, str(path), encoded=np.fromfile(path, np.uint8))
        np.testing.assert_array_equal(trained, prepare(frame.image, trained.shape[:2], bgr=True))
        np.testing.assert_array_equal(resize(trained, (32, 32), "area"),
                                      prepare(frame.image, (32, 32), "area", bgr=True))
    assert read_rgb(gray_png).shape[2] == 3 and cv2.imread(str(gray_png), cv2.IMREAD_UNCHANGED).ndim == 2


def test_a_truncated_jpeg_is_refused_not_filled_in(tmp_path):
    path = tmp_path / "t.jpg"
    cv2.imwrite(str(path), np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DatasetError, match="truncated JPEG"):
        read_rgb(path)
