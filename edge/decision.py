"""Pass/reject from class scores: the defect score 1 - p(good) against the threshold, per-class overrides."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Decision", "decide", "failsafe"]


@dataclass(frozen=True)
class Decision:
    decision: str  # "pass" | "reject"
    reason: str  # "ok" | "defect" | "failsafe" | "late" | "overflow"
    label: str
    score: float  # defect score 1 - p(good)
    scores: dict[str, float]


def decide(scores: np.ndarray, labels: list[str], threshold: float, good_index: int,
           class_thresholds: dict[str, float] | None = None) -> Decision:
    named = {label: round(float(s), 5) for label, s in zip(labels, scores)}
    defect = float(1.0 - scores[good_index])
    label = labels[int(np.argmax(scores))]
    hit = defect >= threshold or any(named.get(c, 0.0) >= t for c, t in (class_thresholds or {}).items())
    if hit and label == "good":  # rejected on the defect score: name the likeliest defect
        label = max((c for c in labels if c != "good"), key=lambda c: named[c])
    return Decision("reject" if hit else "pass", "defect" if hit else "ok", label, defect, named)


def failsafe(reason: str, on_error: str = "reject") -> Decision:
    """A part that could not be inspected: rejected unless the config passes such parts on purpose."""
    return Decision("reject" if on_error == "reject" else "pass", reason, "unknown", float("nan"), {})
