"""The Coral Edge TPU: the `_edgetpu.tflite` model through the libedgetpu delegate."""

from __future__ import annotations

import platform

from edge.classifiers.base import Classifier, import_interpreter
from edge.errors import EdgeError

LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("ai-edge-litert", "tflite-runtime"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "LiteRT of unknown version"


class EdgeTPUClassifier(Classifier):
    name = "edgetpu"

    def _make_interpreter(self, num_threads: int):
        interpreter_cls, load_delegate = import_interpreter()
        model = self.bundle.model_bytes("edgetpu")  # names what is missing when the bundle has no compiled model
        lib = LIBRARY.get(platform.system(), "libedgetpu.so.1")
        try:
            delegate = load_delegate(lib)
        except (ValueError, OSError) as exc:
            raise EdgeError(f"cannot load the Edge TPU delegate {lib} ({exc}): install libedgetpu (Coral's apt "
                            f"repository: libedgetpu1-std) built for this LiteRT ({_litert_version()}; stock "
                            "libedgetpu builds are known to crash with TF Lite newer than 2.11) and plug in the "
                            "accelerator") from exc
        return interpreter_cls(model_content=model, experimental_delegates=[delegate],
                               num_threads=num_threads)
