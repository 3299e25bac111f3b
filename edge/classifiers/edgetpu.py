"""The Coral Edge TPU: the `_edgetpu.tflite` model through the libedgetpu delegate."""

from __future__ import annotations

import platform

from edge.classifiers.base import Classifier, import_interpreter
from edge.errors import EdgeError

LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


class EdgeTPUClassifier(Classifier):
    name = "edgetpu"

    def _make_interpreter(self, num_threads: int):
        interpreter_cls, load_delegate = import_interpreter()
        if not self.bundle.card.model_file.endswith("_edgetpu.tflite"):
            raise EdgeError(f"{self.bundle.path}: the Edge TPU needs a model compiled by edgetpu_compiler "
                          "(model_edgetpu.tflite); export with `qc export --edgetpu`")
        lib = LIBRARY.get(platform.system(), "libedgetpu.so.1")
        try:
            delegate = load_delegate(lib)
        except (ValueError, OSError) as exc:
            raise EdgeError(f"cannot load the Edge TPU delegate {lib} ({exc}); install the Edge TPU runtime "
                          "(Debian package libedgetpu1-std from Coral's apt repository) and plug in the "
                          "accelerator") from exc
        return interpreter_cls(model_path=str(self.bundle.model_path), experimental_delegates=[delegate],
                               num_threads=num_threads)
