"""Will the Edge TPU run a converted model whole? Its operator table, with each operator's conditions, and a
check of a .tflite model against it, read with the LiteRT interpreter.

Source of the table: Coral, "TensorFlow models on the Edge TPU", section "Supported operations" (the same
table is reproduced in Axis's ARTPEC-7 documentation, whose deep-learning unit is an Edge TPU). The
compiler maps operators only up to the first one it cannot run and refuses tensors of dynamic size, so one
unsupported operator near the input sends nearly the whole model to the CPU; hence a refusal, not a note.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OPS", "Problem", "check"]

# operator (as LiteRT names it) -> the condition Coral states for it ("" where none)
OPS = {
    "ADD": "",
    "AVERAGE_POOL_2D": "no fused activation function",
    "CONCATENATION": "no fused activation function; a constant input only as the second of two, all zeros",
    "CONV_2D": "the same dilation in x and y",
    "DEPTHWISE_CONV_2D": "the same dilation in x and y",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "default weight format; one-dimensional output",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "unidirectional only",
    "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation function",
    "MEAN": "no reduction over the batch dimension; a reduction over channels needs a multiple of 4 of them",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "no packing in the batch dimension",
    "PAD": "no padding in the batch dimension",
    "PRELU": "one-dimensional alpha",
    "QUANTIZE": "",
    "REDUCE_MAX": "no reduction over the batch dimension",
    "REDUCE_MIN": "no reduction over the batch dimension",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "some reshapes of large tensors are not mapped",
    "RESIZE_BILINEAR": "three-dimensional input and output; may stay on the CPU to keep precision",
    "RESIZE_NEAREST_NEIGHBOR": "three-dimensional input and output; may stay on the CPU to keep precision",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "one-dimensional input of at most 16,000 elements",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "no splitting in the batch dimension",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": "all strides 1, no ellipsis or new-axis masks",
    "SUB": "",
    "SUM": "no reduction over the batch dimension",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}
REDUCTIONS = {"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN"}
SOFTMAX_MAX = 16_000


@dataclass(frozen=True)
class Problem:
    position: int  # the operator's index in the graph (-1: the model as a whole)
    op: str
    reason: str

    def __str__(self) -> str:
        where = f"operator {self.position} {self.op}" if self.position >= 0 else self.op
        return f"{where}: {self.reason}"


def _interpreter(model: bytes):
    """The graph as converted: without the default XNNPACK delegate, which would fold operators into one."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=model,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def _constant(it, index: int) -> np.ndarray | None:
    try:
        return np.asarray(it.get_tensor(index))
    except ValueError:
        return None


def check(model: bytes) -> list[Problem]:
    """Every reason the Edge TPU compiler would not map `model` whole; empty when it would."""
    it = _interpreter(model)
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    problems = []
    for d in [*it.get_input_details(), *it.get_output_details()]:
        if -1 in list(d.get("shape_signature", d["shape"])):
            problems.append(Problem(-1, "model", f"tensor '{d['name']}' has a dynamic shape "
                                    f"{list(d['shape_signature'])}"))
    for op in it._get_ops_details():
        name, pos = op["op_name"], op["index"]
        if name not in OPS:
            problems.append(Problem(pos, name, "not in the Edge TPU's operator table"))
            continue
        shapes = [list(tensors[i]["shape"]) for i in op["inputs"] if i >= 0 and i in tensors]
        signature = [list(tensors[i].get("shape_signature", tensors[i]["shape"]))
                     for i in [*op["inputs"], *op["outputs"]] if i >= 0 and i in tensors]
        if any(-1 in s for s in signature):
            problems.append(Problem(pos, name, "a tensor of dynamic size"))
        if name in REDUCTIONS and len(op["inputs"]) > 1:
            axes = _constant(it, op["inputs"][1])
            rank = len(shapes[0]) if shapes else 0
            axes = sorted({int(a) % rank for a in np.ravel(axes)}) if axes is not None and rank else []
            if 0 in axes:
                problems.append(Problem(pos, name, "reduces over the batch dimension"))
            if name == "MEAN" and rank and rank - 1 in axes and shapes[0][-1] % 4:
                problems.append(Problem(pos, name, f"reduces over {shapes[0][-1]} channels, not a multiple of 4"))
        if name == "SOFTMAX" and shapes and (sum(n > 1 for n in shapes[0]) > 1 or np.prod(shapes[0]) > SOFTMAX_MAX):
            problems.append(Problem(pos, name, f"input of shape {shapes[0]} is not one-dimensional"))
        if name == "STRIDED_SLICE" and len(op["inputs"]) > 3:
            strides = _constant(it, op["inputs"][3])
            if strides is not None and np.any(strides != 1):
                problems.append(Problem(pos, name, f"strides {strides.tolist()} are not all 1"))
        floats = [tensors[i]["name"] for i in op["outputs"] if np.dtype(tensors[i]["dtype"]).kind == "f"]
        if floats and name not in ("DEQUANTIZE",):
            problems.append(Problem(pos, name, f"float output {floats[0]!r}: the Edge TPU runs int8 only"))
    return problems
