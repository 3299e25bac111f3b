"""Folder datasets: find images, check them, split them, summarise them, load them as arrays.

Layouts: DIR/<class>/*, DIR/{train,val,test}/<class>/*, and MVTec AD (train/good, test/<defect>,
ground_truth/<defect>/<stem>_mask.png). `masks/` is reserved for pixel masks. No TensorFlow here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge import tiles
from edge.decision import GOOD
from edge.images import IMAGE_EXTS, ImageError
from edge.images import decode as decode_image
from edge.preprocess import resize, to_rgb
from training.config import DEFECT_LABEL
from training.errors import TrainingError

__all__ = ["GOOD", "SPLIT_FRACTIONS", "DatasetError", "Item", "Dataset", "Views", "scan", "load_arrays", "load_views",
           "read_rgb", "load_mask", "split_sizes", "tile_labels"]

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
SPLIT_NAMES = tuple(SPLIT_FRACTIONS)
# a tile is a defect when it holds this share of its photo's defect pixels or this many of them; a tile with
# fewer (a sliver of a defect at its edge) is left out of training: neither label is true of it
DEFECT_TILE_SHARE, DEFECT_TILE_PIXELS = 0.5, 64
RESERVED = {"masks", "ground_truth"}


class DatasetError(TrainingError, ValueError):
    """A dataset folder that cannot be used, with the path that is wrong."""


@dataclass
class Item:
    path: Path
    label: str
    split: str
    mask: Path | None = None
    kind: str | None = None  # good-only: the defect folder a test photo came from (its label is `defect`)


@dataclass
class Dataset:
    root: Path
    layout: str
    classes: list[str]
    items: list[Item]
    manifest_sha256: str
    bad: list[tuple[Path, str]] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    left_out: int = 0  # good-only: defect photos of the train and val splits, not used

    @property
    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: {c: sum(1 for it in self.split(s) if it.label == c) for c in self.classes} for s in SPLIT_NAMES}

    def summary(self) -> str:
        counts = self.counts()
        width = max(len(c) for c in self.classes) + 2
        lines = [f"dataset {self.root} ({self.layout} layout), {len(self.items)} images, classes {self.classes}"]
        lines.append(" " * width + "".join(f"{s:>8}" for s in SPLIT_NAMES) + f"{'total':>8}")
        for c in self.classes:
            row = [counts[s][c] for s in SPLIT_NAMES]
            lines.append(f"{c:<{width}}" + "".join(f"{n:>8}" for n in row) + f"{sum(row):>8}")
        totals = Counter(it.label for it in self.items)
        n_good = totals[GOOD]
        lines.append(
            f"imbalance: good:defect = {n_good}:{len(self.items) - n_good}, "
            f"largest/smallest class = {max(totals.values()) / max(1, min(totals.values())):.1f}"
        )
        if self.sizes:
            ws = [w for (w, _h, _c) in self.sizes.elements()]
            hs = [h for (_w, h, _c) in self.sizes.elements()]
            chans = sorted({c for (_w, _h, c) in self.sizes})
            lines.append(
                f"image sizes: width {min(ws)}-{max(ws)}, height {min(hs)}-{max(hs)}, "
                f"{len(self.sizes)} distinct, channels {chans}"
            )
        if self.left_out:
            lines.append(f"good-only: {self.left_out} defect photo(s) of the train and val splits left out; "
                         f"the test split's {counts['test'].get(DEFECT_LABEL, 0)} kept to evaluate with")
        if self.bad:
            lines.append(f"skipped {len(self.bad)} unreadable file(s):")
            lines += [f"  {p}: {why}" for p, why in self.bad]
        return "\n".join(lines)


def decode(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Decode image bytes with the edge's decoder, or raise a DatasetError naming the path."""
    try:
        return decode_image(data, str(path))
    except ImageError as exc:
        raise DatasetError(str(exc)) from exc


def read_rgb(path: Path) -> np.ndarray:
    """An image file as H x W x 3 RGB, decoded as the box decodes its frames."""
    return to_rgb(decode(Path(path).read_bytes(), path), bgr=True)


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, val, test) sizes of a class of n images: every split gets at least one."""
    n_val = max(1, round(n * SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(n * SPLIT_FRACTIONS["test"]))
    return n - n_val - n_test, n_val, n_test


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    m = read_rgb(path)[..., 0]
    return resize(m, size, "nearest") > 127


def _images_in(folder: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [p for p in files if p.suffix.lower() in IMAGE_EXTS], [p for p in files if p.suffix.lower() not in IMAGE_EXTS]


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and d.name not in RESERVED and not d.name.startswith("."))


def _order_classes(names) -> list[str]:
    names = set(names)
    return [GOOD] + sorted(names - {GOOD}) if GOOD in names else sorted(names)


def _stratified_split(items: list[Item], seed: int) -> None:
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Item]] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    for label, group in by_class.items():
        if len(group) < 3:
            raise DatasetError(f"class '{label}' has {len(group)} image(s); at least 3 are needed to split train/val/test")
        order = rng.permutation(len(group))
        _, n_val, n_test = split_sizes(len(group))
        for rank, idx in enumerate(order):
            group[idx].split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"


def _find_mask(root: Path, label: str, path: Path) -> Path | None:
    for base in (root / "masks", root.parent / "masks"):
        cand = base / label / f"{path.stem}.png"
        if cand.exists():
            return cand
    cand = root / "ground_truth" / label / f"{path.stem}_mask.png"
    return cand if cand.exists() else None


def _collect(root: Path) -> tuple[str, list[Item], list[Path]]:
    subdirs = {d.name for d in _class_dirs(root)}
    strays: list[Path] = []
    items: list[Item] = []
    if (root / "ground_truth").is_dir() and {"train", "test"} <= subdirs:
        layout = "mvtec"
        for split_dir in ("train", "test"):
            for cdir in _class_dirs(root / split_dir):
                imgs, other = _images_in(cdir)
                strays += other
                items += [Item(p, cdir.name, "") for p in imgs]  # train has no defects: pooled, re-split
    elif {"train", "val", "test"} & subdirs:
        layout = "split"
        for split in SPLIT_NAMES:
            if not (root / split).is_dir():
                raise DatasetError(f"{root}: split folders found but {root / split} is missing")
            for cdir in _class_dirs(root / split):
                imgs, other = _images_in(cdir)
                strays += other
                items += [Item(p, cdir.name, split) for p in imgs]
    else:
        layout = "class"
        for cdir in _class_dirs(root):
            imgs, other = _images_in(cdir)
            strays += other
            items += [Item(p, cdir.name, "") for p in imgs]
    return layout, items, strays


def _check_classes(root: Path, layout: str, items: list[Item], seed: int, good_only: bool) -> list[str]:
    if not items:
        raise DatasetError(f"{root}: no images found (expected {root}/<class>/*.png|jpg|bmp|tif)")
    counts = Counter(it.label for it in items)
    empty = [c for c in counts if counts[c] == 0]
    if empty:
        raise DatasetError(f"{root}: class folder(s) {empty} hold no images")
    if GOOD not in counts:
        raise DatasetError(f"{root}: no '{GOOD}' class folder; the non-defective class must be named '{GOOD}'")
    if len(counts) < 2 and not good_only:
        raise DatasetError(f"{root}: only the class {list(counts)}; at least one defect class is needed "
                           "(or train with --good-only)")
    classes = _order_classes(counts)
    if layout != "split":
        _stratified_split(items, seed)
    for split in SPLIT_NAMES:
        present = {it.label for it in items if it.split == split}
        missing = [c for c in ([GOOD] if good_only else classes) if c not in present]
        if missing:
            raise DatasetError(f"{root}: split '{split}' has no images of class(es) {missing}")
    return classes


def _good_only(items: list[Item]) -> tuple[list[Item], int]:
    """The items a good-only model sees: the good photos, and the test split's defects labelled `defect`."""
    kept = [it for it in items if it.label == GOOD or it.split == "test"]
    for it in kept:
        if it.label != GOOD:
            it.kind, it.label = it.label, DEFECT_LABEL
    return kept, len(items) - len(kept)


def scan(root: str | Path, seed: int = 0, skip_bad: bool = False, check_images: bool = True,
         good_only: bool = False) -> Dataset:
    """Find and check every image; fail before training on anything wrong (or skip it with skip_bad).
    `good_only`: a `good` class alone is enough, and the classes become good and defect (see _good_only)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    layout, items, strays = _collect(root)
    if strays and not skip_bad:
        listing = "\n  ".join(str(p) for p in strays[:20])
        raise DatasetError(f"{root}: {len(strays)} non-image file(s) in class folders:\n  {listing}\n"
                           "remove them, or pass --skip-bad to ignore them")
    bad: list[tuple[Path, str]] = [(p, "not an image file") for p in strays]
    sizes: Counter = Counter()
    digest = hashlib.sha256()
    good_items = []
    for it in sorted(items, key=lambda it: str(it.path)):
        data = it.path.read_bytes()
        if check_images:
            try:
                arr = decode(data, it.path)
            except DatasetError as exc:
                bad.append((it.path, str(exc).split(": ", 1)[1]))
                continue
            sizes[(arr.shape[1], arr.shape[0], 1 if arr.ndim == 2 else arr.shape[2])] += 1
        digest.update(f"{it.path.relative_to(root)}\0{it.label}\0{it.split}\0".encode())
        digest.update(hashlib.sha256(data).digest())
        it.mask = _find_mask(root, it.label, it.path)
        good_items.append(it)
    unreadable = [b for b in bad if b[1] != "not an image file"]
    if unreadable and not skip_bad:
        listing = "\n  ".join(f"{p}: {why}" for p, why in unreadable[:20])
        raise DatasetError(f"{root}: {len(unreadable)} unreadable image(s):\n  {listing}\n"
                           "fix or remove them, or pass --skip-bad to skip them")
    classes = _check_classes(root, layout, good_items, seed, good_only)
    left_out = 0
    if good_only:
        classes = [GOOD, DEFECT_LABEL]
        good_items, left_out = _good_only(good_items)
    return Dataset(root, layout, classes, good_items, digest.hexdigest(), bad, sizes, left_out)


def load_arrays(ds: Dataset, split: str, size: int, with_masks: bool = False):
    """Decode and resize one split: (uint8 N x size x size x 3, int labels, masks or None)."""
    items = ds.split(split)
    x = np.zeros((len(items), size, size, 3), np.uint8)
    masks = np.zeros((len(items), size, size), bool) if with_masks else None
    for i, it in enumerate(items):
        x[i] = resize(read_rgb(it.path), (size, size), "area")
        if with_masks and it.mask is not None:
            masks[i] = load_mask(it.mask, (size, size))
    y = np.array([ds.class_index[it.label] for it in items], np.int64)
    return x, y, masks



@dataclass
class Views:
    """What a model sees of a split: one resized photo each, or each photo's tiles. `y` labels each view (on
    tiles from the photo's mask; -1 where it cannot say), `owner` is the photo a view came from, `labels` the
    photos' own labels."""

    x: np.ndarray
    y: np.ndarray
    masks: np.ndarray | None
    has_mask: np.ndarray
    owner: np.ndarray
    labels: np.ndarray

    def take(self, pick: np.ndarray) -> Views:
        """The views at `pick` (indices or a boolean mask), of the same photos."""
        return Views(self.x[pick], self.y[pick], None if self.masks is None else self.masks[pick],
                     self.has_mask[pick], self.owner[pick], self.labels)

    def labelled(self) -> Views:
        """The views whose label is known: what training and its validation loss use."""
        return self.take(self.y >= 0)


def tile_labels(mask_tiles: np.ndarray, total: int, label: int, good: int) -> np.ndarray:
    """Each tile's label from the defect pixels it holds of the photo's `total` (see DEFECT_TILE_SHARE): the
    photo's label, good, or -1; all -1 on a defect photo whose mask is empty or missing (total 0)."""
    if label == good:
        return np.full(len(mask_tiles), good)
    if not total:
        return np.full(len(mask_tiles), -1)
    inside = mask_tiles.reshape(len(mask_tiles), -1).sum(1)
    whole = inside >= min(DEFECT_TILE_PIXELS, DEFECT_TILE_SHARE * total)
    return np.where(inside == 0, good, np.where(whole, label, -1))


def load_views(ds: Dataset, split: str, size: int, tiling=None, with_masks: bool = False) -> Views:
    """A split as the model sees it: photos resized to `size`, or with `tiling` (edge.bundle.Tiling) their
    tiles at the photos' own resolution, cut by the same code as on the box."""
    items = ds.split(split)
    labels = np.array([ds.class_index[it.label] for it in items], np.int64)
    if tiling is None:
        known = np.array([it.mask is not None for it in items], bool)
        x, y, masks = load_arrays(ds, split, size, with_masks)
        return Views(x, y, masks, known, np.arange(len(items)), labels)
    good = ds.class_index[GOOD]
    xs, ys, ms, hs, owner = [], [], [], [], []
    for i, it in enumerate(items):
        rgb = read_rgb(it.path)
        mask = load_mask(it.mask, rgb.shape[:2]) if it.mask is not None else np.zeros(rgb.shape[:2], bool)
        views, _ = tiles.cut(rgb, tiling.size, tiling.overlap)
        mask_views, _ = tiles.cut(mask, tiling.size, tiling.overlap)
        xs.append(views)
        ys.append(tile_labels(mask_views, int(mask.sum()), labels[i], good))
        ms.append(mask_views)
        hs.append(np.full(len(views), it.mask is not None))
        owner.append(np.full(len(views), i))
    return Views(np.concatenate(xs), np.concatenate(ys), np.concatenate(ms) if with_masks else None,
                 np.concatenate(hs), np.concatenate(owner), labels)
