"""Reject store: frames kept for review with a JSON sidecar and a copy with the defect box drawn.

Capped in files; the oldest go first. `review` files them into a dataset's class folders for retraining.
Every file is encoded in memory and written whole (a temporary name, then renamed): a full disk leaves no
empty or cut image, and the store rests for RETRY_S before it tries again (one error, not one per part).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError

__all__ = ["RejectStore", "review"]


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise EdgeError("the frame could not be encoded as PNG")
    return buf.tobytes()


class RejectStore:
    RETRY_S = 30.0  # after a failed write, how long the store rests before it tries again
    SUFFIXES = (".png", "_box.png", ".json")

    def __init__(self, root: Path, max_files: int = 2000, sample_passes: float = 0.0, seed: int = 0):
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_files, self.sample_passes = max_files, sample_passes
        self._rng = random.Random(seed)
        self._kept = sorted(p.stem for p in self.root.glob("*.json"))
        self._lock = threading.Lock()  # the index and the sidecars: written by the line, read by the station
        self.resting_until = 0.0
        self.not_saved = 0  # frames not kept while the store rested

    def wants(self, decision: str) -> bool:
        return decision == "reject" or (self.sample_passes > 0 and self._rng.random() < self.sample_passes)

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def save(self, image: np.ndarray | None, event: dict) -> Path | None:
        """image: the frame as captured (BGR); event: the inspection event (with `box` when localized). None
        while the store rests after a failed write; a failure removes what this frame had written and raises."""
        if time.monotonic() < self.resting_until:
            self.not_saved += 1
            return None
        stem = f"{event['seq']:09d}_{event['id']}"
        files = {".json": json.dumps(event, indent=1).encode()}
        if image is not None:
            files[".png"] = _png(image)
            if event.get("box"):
                x, y, w, h = event["box"]
                boxed = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
                cv2.rectangle(boxed, (x, y), (x + w - 1, y + h - 1), (0, 0, 255), max(1, image.shape[1] // 160))
                cv2.putText(boxed, f"{event['label']} {event['score']:.2f}", (x, max(12, y - 4)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255), 1)
                files["_box.png"] = _png(boxed)
        try:
            for suffix in sorted(files, key=lambda s: s == ".json"):  # the sidecar last: it marks a whole entry
                self._write(self.root / f"{stem}{suffix}", files[suffix])
        except OSError as exc:
            for suffix in files:
                (self.root / f"{stem}{suffix}").unlink(missing_ok=True)
            self.resting_until = time.monotonic() + self.RETRY_S
            raise EdgeError(f"reject store {self.root}: {exc.strerror or exc}; not saving for {self.RETRY_S:g} s") \
                from None
        sidecar = self.root / f"{stem}.json"
        with self._lock:
            self._kept.append(stem)
            while len(self._kept) > self.max_files:
                old = self._kept.pop(0)
                for suffix in self.SUFFIXES:
                    (self.root / f"{old}{suffix}").unlink(missing_ok=True)
        return sidecar

    def has(self, stem: str) -> bool:
        """A frame of this store's own index: the only way a request reaches a file."""
        with self._lock:
            return stem in self._kept

    def entries(self, limit: int = 200) -> list[dict]:
        """The newest `limit` sidecars, newest first, each with its `stem`."""
        with self._lock:
            stems = self._kept[-limit:][::-1]
        out = []
        for stem in stems:
            try:
                out.append(json.loads((self.root / f"{stem}.json").read_text()) | {"stem": stem})
            except (OSError, ValueError):  # removed by the cap meanwhile
                continue
        return out

    def label(self, stem: str, label: str, by: str | None) -> dict:
        """An operator's verdict on a stored frame, kept in its sidecar: `qc review` files it by it."""
        with self._lock:
            sidecar = self.root / f"{stem}.json"
            event = json.loads(sidecar.read_text())
            event["review"] = {"label": label, "by": by, "at": time.time()}
            self._write(sidecar, json.dumps(event, indent=1).encode())
        return event


def review(store: Path, into: Path, label: str | None = None, labels_file: Path | None = None,
           split: str = "train") -> dict[str, int]:
    """Copy stored frames into DATASET/<class>/ (or DATASET/<split>/<class>/ for a split dataset).

    Labels come in bulk (`label`), per frame from a JSON file {"<stem or id>": "<class>"}, or, with neither,
    from the labels operators gave on the station's review page (kept in the sidecars; `skip` is not filed);
    frames without a label are left where they are."""
    store, into = Path(store), Path(into)
    per_file = json.loads(Path(labels_file).read_text()) if labels_file else {}
    if not into.is_dir():
        raise EdgeError(f"{into}: dataset folder does not exist")
    base = into / split if (into / split).is_dir() else into
    filed: dict[str, int] = {}
    for sidecar in sorted(store.glob("*.json")):
        event = json.loads(sidecar.read_text())
        reviewed = event.get("review", {}).get("label") if not (label or per_file) else None
        cls = per_file.get(sidecar.stem) or per_file.get(event.get("id", "")) or label or reviewed
        image = sidecar.with_suffix(".png")
        if not cls or cls == "skip" or not image.exists():
            continue
        if cls in ("masks", "ground_truth") or "/" in cls:
            raise EdgeError(f"'{cls}' cannot be a class name")
        (base / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, base / cls / f"review_{image.name}")
        filed[cls] = filed.get(cls, 0) + 1
    if not filed and not (label or per_file):
        raise EdgeError(f"{store}: no frame is labelled on the station's review page; give --label CLASS for all "
                        "frames, or --labels FILE.json mapping frame ids to classes")
    return filed
