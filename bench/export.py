"""Export figures: float32 vs int8 file size, per-frame latency of the int8 model in LiteRT vs the float32
.tflite vs Keras `predict` on one frame (all in one run), and, given a trained run, the int8 accuracy drop.

    python -m bench.export                        # MobileNetV2 1.0 at 224 (random weights: speed and size only)
    python -m bench.export --run RUN              # also the default recipe's model and its F1 drop
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from edge.classifiers.base import import_interpreter  # noqa: E402
from training import model as models  # noqa: E402
from training.export import convert  # noqa: E402


def _invoke_ms(model: bytes, n: int, threads: int) -> float:
    interpreter_cls, _ = import_interpreter()
    it = interpreter_cls(model_content=model, num_threads=threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    t0 = time.perf_counter()
    for _ in range(n):
        it.invoke()
    return (time.perf_counter() - t0) / n * 1000


def measure(net, n: int, threads: int) -> dict:
    cam = models.with_cam(net)
    size = net.input.shape[1]
    rep = np.random.default_rng(0).integers(0, 256, (16, size, size, 3)).astype(np.uint8)
    f32, i8 = convert(cam, "float32"), convert(cam, "int8", rep)
    x = rep[:1].astype(np.float32)
    cam.predict(x, verbose=0)
    t0 = time.perf_counter()
    k = max(5, n // 5)
    for _ in range(k):
        cam.predict(x, verbose=0)
    predict_ms = (time.perf_counter() - t0) / k * 1000
    int8_ms, f32_ms = _invoke_ms(i8, n, threads), _invoke_ms(f32, n, threads)
    return {"model": net.name, "float32_bytes": len(f32), "int8_bytes": len(i8),
            "size_ratio": round(len(f32) / len(i8), 2),
            "latency_ms": {"int8_litert": round(int8_ms, 3), "float32_litert": round(f32_ms, 3),
                           "keras_predict_one_frame": round(predict_ms, 3)},
            "speedup_int8_vs_float32_tflite": round(f32_ms / int8_ms, 2),
            "speedup_int8_vs_keras_predict": round(predict_ms / int8_ms, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a trained run: measure its model and its int8 accuracy drop")
    p.add_argument("--n", type=int, default=50, help="invocations per latency figure")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    result = {"benchmark": "export", "threads": a.threads,
              "mobilenet_v2_1.0_224": measure(models.build("mobilenet_v2", 2, 224, 1.0), a.n, a.threads)}
    if a.run:
        from training.export import export

        result["run"] = measure(models.load(a.run), a.n, a.threads)
        with tempfile.TemporaryDirectory() as tmp:
            res = export(a.run, Path(tmp) / "b", allow_drop=True)
        m = res["metrics"]
        result["run"]["f1_float"] = m["float"]["f1"]
        result["run"]["f1_int8"] = m["int8"]["f1"]
        result["run"]["f1_drop_points"] = round(100 * m["drop"]["f1"], 3)
    big = result["mobilenet_v2_1.0_224"]
    checks = [big["size_ratio"] >= 3.5, big["speedup_int8_vs_float32_tflite"] >= 1.8,
              big["speedup_int8_vs_keras_predict"] >= 25]
    if a.run:
        checks += [result["run"]["speedup_int8_vs_keras_predict"] >= 25, result["run"]["f1_drop_points"] <= 0.5]
    result["targets"] = {"size_ratio": 3.5, "int8_vs_float32_tflite": 1.8, "int8_vs_keras_predict": 25,
                         "f1_drop_points_max": 0.5}
    result["meets_targets"] = all(checks)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
