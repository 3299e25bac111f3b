"""Classifier backends, one file each, found by a registry keyed by the config's `type`.

Every backend takes raw uint8 RGB pixels of the bundle's input size and returns float class scores
and the class activation map, dequantized with the bundle's parameters.
"""

from __future__ import annotations

from edge.bundle import Bundle
from edge.classifiers.base import Classifier, Result
from edge.classifiers.edgetpu import EdgeTPUClassifier
from edge.classifiers.litert import LiteRTClassifier

__all__ = ["BACKENDS", "Classifier", "Result", "make_classifier"]

BACKENDS = {"cpu": LiteRTClassifier, "edgetpu": EdgeTPUClassifier}


def make_classifier(bundle: Bundle, backend: str = "auto", num_threads: int = 2) -> Classifier:
    """`auto` picks the Edge TPU for an `_edgetpu.tflite` model, the CPU otherwise."""
    if backend == "auto":
        backend = "edgetpu" if bundle.card.model_file.endswith("_edgetpu.tflite") else "cpu"
    return BACKENDS[backend](bundle, num_threads=num_threads)
