"""Synthetic generator speed: images per second at 128x128 on one core, writing PNGs like `qc synth`.

Baseline in the same run: decoding the same PNGs back with OpenCV (the cheapest thing a loader does).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2

from bench.record import emit
from training.synth import SynthConfig, generate


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--size", type=int, default=128)
    a = p.parse_args(argv)
    cv2.setNumThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate(Path(tmp) / "d", SynthConfig(count=a.count, seed=1, size=a.size))
        gen_s = time.perf_counter() - t0
        files = sorted((Path(tmp) / "d").rglob("*.png"))
        t0 = time.perf_counter()
        for f in files:
            cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        decode_s = time.perf_counter() - t0
    result = {"module": "bench.synth", "benchmark": "synth", "count": a.count, "size": a.size, "cores": 1,
              "images_per_s": round(a.count / gen_s, 1),
              "baseline_png_decode_per_s": round(len(files) / decode_s, 1),
              "target_images_per_s": 300}
    result["meets_target"] = result["images_per_s"] >= 300
    return emit(result)


if __name__ == "__main__":
    main()
