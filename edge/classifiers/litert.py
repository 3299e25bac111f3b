"""LiteRT on the CPU (XNNPACK), with a set number of threads."""

from __future__ import annotations

from edge.classifiers.base import Classifier, import_interpreter


class LiteRTClassifier(Classifier):
    name = "cpu"

    def _make_interpreter(self, num_threads: int):
        interpreter_cls, _ = import_interpreter()
        return interpreter_cls(model_content=self.bundle.model_bytes(self.name), num_threads=num_threads)
