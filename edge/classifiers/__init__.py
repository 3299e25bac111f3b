"""Classifier backends, one file each, found by a registry keyed by the config's `type`.

Every backend takes raw uint8 RGB pixels of the bundle's input size and returns float class scores
and the class activation map, dequantized with the bundle's parameters.
"""

from __future__ import annotations

from edge.bundle import Bundle
from edge.classifiers.base import Classifier, Result
from edge.classifiers.edgetpu import EdgeTPUClassifier
from edge.classifiers.litert import LiteRTClassifier
from edge.errors import EdgeError

__all__ = ["BACKENDS", "Classifier", "Result", "make_classifier"]

BACKENDS = {"cpu": LiteRTClassifier, "edgetpu": EdgeTPUClassifier}


def make_classifier(bundle: Bundle, backend: str = "auto", num_threads: int = 2) -> Classifier:
    """`auto` takes the Edge TPU for a bundle compiled for it when its delegate loads, the CPU otherwise (one
    bundle serves a Pi, a Jetson and a Coral); a named backend that cannot run is an error that says why."""
    if backend != "auto":
        return BACKENDS[backend](bundle, num_threads=num_threads)
    if bundle.compiled_for_edgetpu:
        try:
            return EdgeTPUClassifier(bundle, num_threads=num_threads)
        except EdgeError:
            if bundle.only_compiled:
                raise  # there is no CPU model to fall back on
    return LiteRTClassifier(bundle, num_threads=num_threads)
