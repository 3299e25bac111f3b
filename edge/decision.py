"""Pass/reject from class scores: the defect score 1 - p(good) against the threshold, per-class overrides.

The good class and the defect score are defined here once, for the box and for training alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GOOD", "REASONS", "Decision", "decide", "defect_scores", "failsafe"]

GOOD = "good"  # the non-defective class; every dataset and bundle has it exactly once
REASONS = {
    "ok": "inspected and passed",
    "defect": "inspected and rejected: a defect score or class score at its threshold",
    "failsafe": "not inspected: unreadable frame, model error or past decision.deadline_ms",
    "overflow": "not inspected: the queue to the workers was full",
    "camera_lost": "not inspected: no frame exposed after the part's trigger came from the camera in time",
    "paused": "not inspected: the line is paused by command",
    "late": "rejected, but decided after the part had passed the gate",
    "too_large": "not inspected: the image's header announced more than source.max_pixels pixels",
    "gate_overflow": "to be rejected, but the gate already held gate.max_in_flight parts: not rejected",
}


def defect_scores(probs: np.ndarray, good_index: int) -> np.ndarray:
    """1 - p(good) over the last axis: one score per part (or per map cell), higher is more defective.

    Summed from the defect classes' own probabilities rather than subtracted from 1: where the model is sure
    of `good`, p(good) rounds to 1.0 in float32 and the subtraction would give 0 at every cell (a reject
    without a box), while the defect probabilities stay small and positive."""
    return np.delete(np.asarray(probs), good_index, axis=-1).sum(-1)


@dataclass(frozen=True)
class Decision:
    decision: str  # "pass" | "reject"
    reason: str  # a key of REASONS
    label: str
    score: float  # defect score 1 - p(good)
    scores: dict[str, float]


def decide(scores: np.ndarray, labels: list[str], threshold: float, good_index: int,
           class_thresholds: dict[str, float] | None = None) -> Decision:
    named = {label: round(float(s), 5) for label, s in zip(labels, scores)}
    defect = float(defect_scores(scores, good_index))
    label = labels[int(np.argmax(scores))]
    hit = defect >= threshold or any(named.get(c, 0.0) >= t for c, t in (class_thresholds or {}).items())
    if hit and label == GOOD:  # rejected on the defect score: name the likeliest defect
        label = max((c for c in labels if c != GOOD), key=lambda c: named[c])
    return Decision("reject" if hit else "pass", "defect" if hit else "ok", label, defect, named)


def failsafe(reason: str, on_error: str = "reject") -> Decision:
    """A part that could not be inspected: rejected unless the config passes such parts on purpose."""
    if reason not in REASONS:
        raise ValueError(f"reason {reason!r} is not one of {sorted(REASONS)}")
    return Decision("reject" if on_error == "reject" else "pass", reason, "unknown", float("nan"), {})
