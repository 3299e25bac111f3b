"""Will the Edge TPU run a converted model whole? Its operator table, with each operator's conditions, and a
check of a .tflite model against it, read with the LiteRT interpreter.

Source of the table: Coral, "TensorFlow models on the Edge TPU", section "Supported operations" (the same
table is reproduced in Axis's ARTPEC-7 documentation, whose deep-learning unit is an Edge TPU). The
compiler maps operators only up to the first one it cannot run and refuses tensors of dynamic size, so one
unsupported operator near the input sends nearly the whole model to the CPU; hence a refusal, not a note.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.errors import TrainingError

__all__ = ["OPS", "CompileReport", "Problem", "check", "compile_bundle", "compile_model", "compiled_target",
           "compiler", "parse_report"]

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
                                    f"{np.asarray(d['shape_signature']).tolist()}"))
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


@dataclass(frozen=True)
class CompileReport:
    version: str
    on_tpu: int
    on_cpu: int
    not_mapped: list[str]  # "OP (count): status" of every operator line not mapped to the Edge TPU


def parse_report(text: str) -> CompileReport:
    """edgetpu_compiler's printed report (with -s). Where every operator maps, it prints no "will run on"
    counts, only its table: the counts then come from the table's status lines."""
    version = re.search(r"Edge TPU Compiler version (\S+)", text)
    rows = [m.groups() for m in re.finditer(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*?)\s*$", text, re.M)]
    not_mapped = [f"{op} ({n}): {status}" for op, n, status in rows if status != "Mapped to Edge TPU"]
    on_tpu = re.search(r"Number of operations that will run on Edge TPU: (\d+)", text)
    on_cpu = re.search(r"Number of operations that will run on CPU: (\d+)", text)
    mapped = sum(int(n) for op, n, status in rows if status == "Mapped to Edge TPU")
    return CompileReport(version.group(1) if version else "unknown",
                         int(on_tpu.group(1)) if on_tpu else mapped,
                         int(on_cpu.group(1)) if on_cpu else sum(int(n) for _, n, s in rows if s != "Mapped to Edge TPU"),
                         not_mapped)


def compiler() -> str | None:
    """edgetpu_compiler on PATH (x86-64 only, from Coral's apt repository), or None."""
    return shutil.which("edgetpu_compiler")


def compile_model(model: Path, out_dir: Path) -> tuple[Path, CompileReport]:
    """Compile `model` into `out_dir`; refuse, naming the operators, when any of them would run on the CPU."""
    exe = compiler()
    if exe is None:
        raise TrainingError("edgetpu_compiler is not on PATH: it comes from Coral's apt repository (package "
                            "edgetpu-compiler) and runs on x86-64 only")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([exe, "-s", "-o", tmp, str(model)], capture_output=True, text=True, timeout=600)
        compiled = Path(tmp) / f"{model.stem}_edgetpu.tflite"
        if proc.returncode != 0 or not compiled.is_file():
            raise TrainingError(f"edgetpu_compiler failed (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-600:]}")
        report = parse_report(proc.stdout)
        if report.on_cpu:
            raise TrainingError(f"edgetpu_compiler would run {report.on_cpu} operation(s) on the CPU: "
                                + "; ".join(report.not_mapped))
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / compiled.name
        shutil.copyfile(compiled, target)
    return target, report


def compiled_target(model: Path, out_dir: Path) -> dict:
    """The card's `edgetpu` entry for `model` compiled into `out_dir`."""
    target, report = compile_model(model, out_dir)
    return {"status": "compiled", "model_file": target.name,
            "sha256": hashlib.sha256(target.read_bytes()).hexdigest(), "compiler": report.version,
            "operations": {"edgetpu": report.on_tpu, "cpu": report.on_cpu}}


def compile_bundle(path: Path) -> dict:
    """`qc bundle compile`: compile a bundle's CPU model for the Edge TPU and record it in the card."""
    from edge.bundle import load_bundle, write_card

    bundle = load_bundle(path)
    if bundle.only_compiled:
        raise TrainingError(f"{path}: its model is already compiled (format 1); export it again for a CPU model")
    problems = check(bundle.model_path.read_bytes())
    if problems:
        raise TrainingError(f"{path}: the Edge TPU would not run this model whole: "
                            + "; ".join(map(str, problems[:12])))
    entry = compiled_target(bundle.model_path, Path(path))
    card = write_card(path, bundle.meta | {"edgetpu": entry}).card
    return {"bundle": str(path), "edgetpu": card.edgetpu.model_dump()}
