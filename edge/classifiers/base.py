"""The interpreter-backed classifier shared by the CPU and Edge TPU backends."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.bundle import Bundle, check_tensors
from edge.errors import EdgeError
from edge.quant import dequantize, quantize


def import_interpreter():
    """LiteRT (`ai-edge-litert`), else `tflite-runtime` on boxes that still have it. Never TensorFlow: the
    edge runs without it (tests/test_layers.py holds every edge module to that)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter, load_delegate
        except ImportError as exc:
            raise EdgeError("no LiteRT interpreter: pip install ai-edge-litert "
                            "(or tflite-runtime on older boxes)") from exc
    return Interpreter, load_delegate


def softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@dataclass
class Result:
    scores: np.ndarray  # float32 per class, sums to about 1
    cam: np.ndarray | None  # float32 (h, w, classes) per-location probabilities


class Classifier:
    """Runs one frame at a time through a LiteRT interpreter."""

    name = "base"

    def __init__(self, bundle: Bundle, num_threads: int = 2):
        self.bundle = bundle
        try:
            self.interpreter = self._make_interpreter(num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # not a model LiteRT can read, though its hash matches the card
            raise EdgeError(f"{bundle.path}: LiteRT cannot load the model: {str(exc).splitlines()[0]}") from None
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        check_tensors(bundle, inputs, outputs)
        self._in = inputs[0]
        by_name = {d["name"]: d for d in outputs}
        self._out = by_name[bundle.card.output.name]
        self._cam = by_name[bundle.card.cam.name] if bundle.card.cam else None
        self.input_dtype = np.dtype(self._in["dtype"])
        self._logits = bundle.output_kind == "logits"
        self._cam_logits = bool(bundle.card.cam) and bundle.card.cam.kind == "logits-per-location"

    def _make_interpreter(self, num_threads: int):
        raise NotImplementedError

    def infer(self, rgb: np.ndarray) -> Result:
        """rgb: uint8 (H, W, 3) at the bundle's input size."""
        expected = tuple(self._in["shape"][1:])
        if rgb.shape != expected:
            raise EdgeError(f"input of shape {rgb.shape} does not match the model's {expected}")
        scale, zp = self._in["quantization"]
        self.interpreter.set_tensor(self._in["index"], quantize(rgb, self.input_dtype, scale or 1.0, zp)[None])
        self.interpreter.invoke()
        scores = dequantize(self.interpreter.get_tensor(self._out["index"])[0], *self._out["quantization"])
        if self._logits:
            scores = softmax(scores)
        cam = None
        if self._cam is not None:
            cam = dequantize(self.interpreter.get_tensor(self._cam["index"])[0], *self._cam["quantization"])
            if self._cam_logits:
                cam = softmax(cam)
        return Result(scores, cam)
