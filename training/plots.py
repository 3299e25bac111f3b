"""PNG plots for training and evaluation (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(history: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key, title in zip(axes, ("loss", "accuracy", "val_defect_recall"),
                              ("loss", "accuracy", "validation defect recall")):
        if key in history:
            ax.plot(epochs, history[key], label="train" if key != "val_defect_recall" else "val")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], label="val")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


def confusion(cm: np.ndarray, labels: list[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 1.0 * len(labels) + 1.6))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title("confusion matrix (test)")
    return _save(fig, path)


def curve(x, y, xlabel: str, ylabel: str, title: str, path: Path, diagonal: bool = False) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(x, y)
    if diagonal:
        ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def score_histogram(scores: np.ndarray, is_defect: np.ndarray, threshold: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0, 1, 41)
    ax.hist(scores[~is_defect], bins, alpha=0.6, label="good parts")
    ax.hist(scores[is_defect], bins, alpha=0.6, label="defective parts")
    ax.axvline(threshold, color="red", label=f"reject threshold {threshold:.3f}")
    ax.set(xlabel="defect score = 1 - p(good)", ylabel="parts", title="defect scores (test)", yscale="log")
    ax.legend()
    return _save(fig, path)


def gallery(images: list[np.ndarray], captions: list[str], path: Path, cols: int = 6) -> Path:
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(img)
        ax.set_title(cap, fontsize=7)
    return _save(fig, path)
