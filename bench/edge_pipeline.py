"""`qc bench --bundle B`: how fast the edge inspects 640x480 frames, against baselines in the same run.

Stages alone (read = BMP decode, preprocess, bare interpreter invoke) and a naive sequential loop; then the
pipeline as `qc run` builds it, fed the same encoded frames from memory: its capacity (unpaced, as a
recording, which waits for the workers, so the rate is what they sustain) and its latency at a line rate of
80 % of the slowest stage (parts paced as on a conveyor: p50/p99 from when each part was due to its decision,
and whether every part was inspected), also at 40 % and 60 %. Beside the latency run, its floor on this
machine: the naive loop in as many processes as the pipeline has workers, paced together at the same line
rate and timed the same way (no shared GIL, no queue: what the machine alone does to the tail). All after a
warm-up; peak RSS. Last, where TensorFlow is installed: the int8 invoke time of the default backbone beside the
previous default's, built the same way at the bundle's input size. Prints JSON.
"""

from __future__ import annotations

import itertools
import multiprocessing
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from edge.app import build_runtime
from edge.bundle import Bundle, Tiling, load_bundle
from edge.classifiers import make_classifier
from edge.config import EdgeConfig, validate_config
from edge.decision import decide
from edge.pipeline import frame_views
from edge.preprocess import prepare
from edge.sources import Frame, Paced, Recorded
from edge.telemetry import MemoryTelemetry
from edge.tiles import corners

__all__ = ["backbone_invoke", "run_benchmark"]

PREVIOUS_DEFAULT_ARCH = "mobilenet_v3_small"  # the default until the Edge TPU needed a backbone without hard-swish
LINE_SHARE = 0.8  # the line rate for the latency run, as a share of the slowest stage (the target)
SLOWER_LINES = (0.4, 0.6)  # also measured: where the latency tail holds when the line leaves more headroom


def _rate(fn, n: int) -> float:
    fn()  # warm up
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def _frames(folder: Path, n: int, size=(480, 640)) -> list[Path]:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.normal(128, 30, size).astype(np.float32), (0, 0), 3)
    paths = []
    for i in range(n):
        img = np.clip(base + rng.normal(0, 8, size), 0, 255).astype(np.uint8)
        cv2.circle(img, (int(rng.integers(50, 590)), int(rng.integers(50, 430))), 12, 30, -1)
        paths.append(folder / f"{i:04d}.bmp")  # uncompressed, like a camera buffer: "read" is not a PNG codec
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    return paths


class _Timeline(MemoryTelemetry):
    """Keeps when each part was decided, its latency and its reason."""

    def __init__(self):
        super().__init__()
        self.parts: list[tuple[float, float, str]] = []

    def inspection(self, event: dict) -> None:
        self.parts.append((time.monotonic(), event["latency_ms"], event["reason"]))


def _naive_part(clf, blob: np.ndarray) -> None:
    """One part the naive way: decode, preprocess, invoke, decide."""
    bundle = clf.bundle
    img = cv2.imdecode(blob, cv2.IMREAD_COLOR)
    res = clf.infer(prepare(img, bundle.input_size, bundle.resize, bgr=True))
    decide(res.scores, bundle.labels, bundle.threshold, bundle.good_index)


def _paced_naive_loop(bundle_path: str, backend: str, num_threads: int, paths: list[str], rate: float,
                      start_at: float, warmup: float, seconds: float) -> list[float]:
    """One process's share of the line: the naive loop paced at `rate` from `start_at`; latencies (ms, from
    the part's arrival on the line to its decision, so a late wake-up counts) after the warm-up."""
    clf = make_classifier(load_bundle(Path(bundle_path)), backend, num_threads)
    blobs = [np.fromfile(p, np.uint8) for p in paths]
    time.sleep(max(0.0, start_at - time.monotonic()))
    pace, latencies, i = Paced(rate), [], 0
    while time.monotonic() < start_at + warmup + seconds:
        stamp = pace.wait()
        _naive_part(clf, blobs[i % len(blobs)])
        if stamp >= start_at + warmup:
            latencies.append((time.monotonic() - stamp) * 1000)
        i += 1
    return latencies


def _machine_floor(bundle_path: Path, backend: str, num_threads: int, paths: list[Path], rate: float,
                   processes: int, seconds: float, warmup: float) -> dict:
    """The naive loop in `processes` processes sharing the line rate, their parts interleaved as on the line."""
    start_at = time.monotonic() + 3.0  # after the processes have started and loaded the model
    args = [(str(bundle_path), backend, num_threads, [str(p) for p in paths], rate / processes,
             start_at + k / rate, warmup, seconds) for k in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        latency = np.concatenate([np.array(lat) for lat in pool.starmap(_paced_naive_loop, args)])
    p50, p99 = (float(np.percentile(latency, q)) for q in (50, 99))
    return {"processes": processes, "offered_per_s": round(rate, 1), "parts": len(latency),
            "latency_p50_ms": round(p50, 2), "latency_p99_ms": round(p99, 2), "p99_over_p50": round(p99 / p50, 2)}


class _Line(Recorded):
    """Encoded frames from memory, looping, as the naive loop and the stages get them: no file reads, which a
    camera does not do either. Paced at `rate` (a live line: overflow is a fail-safe reject), or unpaced (a
    recording, which waits for the workers)."""

    def __init__(self, blobs: list[np.ndarray], rate: float | None = None):
        self.blobs, self.rate, self.live = blobs, rate, rate is not None

    def __iter__(self):
        pace = Paced(self.rate)
        for seq in itertools.count():
            yield Frame(seq, pace.wait(), None, "bench", encoded=self.blobs[seq % len(self.blobs)])


def _pipeline(cfg: EdgeConfig, source: _Line, seconds: float, warmup: float, beside=None) -> dict:
    """Run the pipeline; figures over the parts decided from `warmup` after the first decision, for `seconds`.
    `beside(runtime)` starts something next to it for the run and returns what stops it."""
    tel = _Timeline()
    runtime = build_runtime(cfg, telemetry=tel, source=source)
    stop = beside(runtime) if beside else None
    try:
        runtime.run(duration=warmup + seconds + 0.5, on_stats=lambda line: None)
    finally:
        if stop:
            stop()
    start = tel.parts[0][0] + warmup if tel.parts else 0.0
    parts = [p for p in tel.parts if start <= p[0] <= start + seconds]
    latency = np.array([p[1] for p in parts]) if parts else np.zeros(1)
    reasons = dict(Counter(p[2] for p in parts))
    inspected = reasons.get("ok", 0) + reasons.get("defect", 0)
    return {"parts": len(parts), "inspected": inspected, "not_inspected": len(parts) - inspected,
            "reasons": reasons, "inspected_per_s": round(inspected / seconds, 1),
            "latency_p50_ms": round(float(np.percentile(latency, 50)), 2),
            "latency_p99_ms": round(float(np.percentile(latency, 99)), 2)}


def backbone_invoke(size: int, n: int) -> dict:
    """Int8 invoke time on the CPU (1 thread) of the default backbone beside the previous default, at `size`:
    both untrained (random weights cost the same) with the activation-map head, converted as `qc export` does,
    timed in interleaved rounds. Needs TensorFlow (the `train` extra); without it, says so."""
    try:
        from bench.export import _invoker, _ms
        from training import model as models
        from training.config import ARCHITECTURES, TrainConfig
        from training.export import convert
    except ImportError as exc:
        return {"skipped": f"needs the train extra ({exc.name} is not installed)"}
    default = TrainConfig.model_fields["arch"].default
    rep = np.random.default_rng(0).integers(0, 256, (16, size, size, 3)).astype(np.uint8)
    invoke = {}
    for arch in dict.fromkeys([default, PREVIOUS_DEFAULT_ARCH]):
        net = models.with_cam(models.build(arch, 2, size, ARCHITECTURES[arch].default_alpha), logits=True)
        invoke[arch] = _invoker(convert(net, "int8", rep), threads=1)
    rounds = {arch: [] for arch in invoke}
    for _ in range(10):  # interleaved: a slow spell on a shared machine hits both alike
        for arch, fn in invoke.items():
            rounds[arch].append(_ms(fn, max(1, n // 10)))
    ms = {arch: round(float(np.median(r)), 3) for arch, r in rounds.items()}
    return {"input_size": size, "threads": 1, "default": default, "previous_default": PREVIOUS_DEFAULT_ARCH,
            "int8_invoke_ms": ms, "previous_over_default": round(ms[PREVIOUS_DEFAULT_ARCH] / ms[default], 2)}


TILED_FRAMES = ((270, 324), (480, 640))  # a magnetic-tile photo, a VGA frame


def tiles_per_frame(clf, frame: np.ndarray, n: int) -> dict:
    """Milliseconds per frame (decoded, to decision scores) of the bench's model on the whole frame resized
    once, against the same model on the frame's tiles at its own resolution, one after another as the
    pipeline runs them (`qc train` chooses tiles when small defects would vanish in the resize)."""
    from training.recipe import TILE_OVERLAP

    bundle = clf.bundle
    size = bundle.input_size[0]
    tiled = Bundle(bundle.path, bundle.card.model_copy(
        update={"tiling": Tiling(size=size, overlap=round(size * TILE_OVERLAP))}))

    def inspect(b: Bundle, img: np.ndarray) -> None:
        for view in frame_views(img, b, True, None)[0]:
            clf.infer(view)

    result = {"tile": size, "overlap": tiled.tiling.overlap}
    for shape in TILED_FRAMES:
        img = cv2.resize(frame, shape[::-1], interpolation=cv2.INTER_AREA)
        k = max(5, n // 10)
        whole = 1000 / _rate(lambda img=img: inspect(bundle, img), k)
        per_tiles = 1000 / _rate(lambda img=img: inspect(tiled, img), k)
        result[f"{shape[1]}x{shape[0]}"] = {"tiles": len(corners(shape, size, tiled.tiling.overlap)),
                                           "whole_frame_ms": round(whole, 3), "tiles_ms": round(per_tiles, 3),
                                           "tiles_over_whole": round(per_tiles / whole, 2)}
    return result


def run_benchmark(bundle_path: Path, n: int = 200, num_threads: int | None = None, seconds: float = 5.0,
                  workers: int | None = None, warmup: float = 1.0) -> dict:
    """`num_threads` and `workers` None take `qc run`'s defaults."""
    classifier = {"num_threads": num_threads} if num_threads else {}
    pipeline = {"workers": workers} if workers else {}
    cfg_values = {"bundle": str(bundle_path), "classifier": classifier, "pipeline": pipeline, "store": {"dir": None},
                  "reload_watch": False, "stats_interval_s": 3600,
                  "gpio": {"gate": {"delay_ms": 100, "pulse_ms": 1, "min_gap_ms": 0}}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = _frames(Path(tmp), 32)
        cfg = validate_config(cfg_values | {"source": {"kind": "folder", "path": tmp}})
        clf = make_classifier(load_bundle(bundle_path), cfg.classifier.backend, cfg.classifier.num_threads)
        bundle = clf.bundle
        h, w = bundle.input_size
        method = bundle.resize  # as the pipeline resizes
        blobs = [np.fromfile(p, np.uint8) for p in paths]
        frames = [cv2.imdecode(b, cv2.IMREAD_COLOR) for b in blobs]
        rgb = prepare(frames[0], (h, w), method, bgr=True)
        it = iter(range(10**9))
        read = _rate(lambda: cv2.imdecode(blobs[next(it) % len(blobs)], cv2.IMREAD_COLOR), n)
        pre = _rate(lambda: prepare(frames[next(it) % len(frames)], (h, w), method, bgr=True), n)
        clf.interpreter.set_tensor(clf._in["index"], rgb[None])
        invoke = _rate(clf.interpreter.invoke, n)

        naive = _rate(lambda: _naive_part(clf, blobs[next(it) % len(blobs)]), n)
        slowest = min(read, pre, invoke)
        capacity = _pipeline(cfg, _Line(blobs), seconds, warmup)

        def paced(share: float) -> dict:
            return {"offered_per_s": round(share * slowest, 1),
                    **_pipeline(cfg, _Line(blobs, share * slowest), seconds, warmup)}

        line = paced(LINE_SHARE)
        c = cfg.classifier
        processes = 1 if clf.name == "edgetpu" else cfg.pipeline.workers  # one process can hold an Edge TPU
        floor = _machine_floor(bundle_path, c.backend, c.num_threads, paths, LINE_SHARE * slowest,
                               processes, seconds, warmup)
        slower = {share: paced(share) for share in SLOWER_LINES}
    result = {
        "benchmark": "edge_pipeline", "bundle": str(bundle_path), "model": bundle.name,
        "input": bundle.card.input.shape, "frame": [480, 640], "num_threads": cfg.classifier.num_threads,
        "workers": cfg.pipeline.workers, "queue_size": cfg.pipeline.queue_size, "seconds": seconds, "warmup_s": warmup,
        "stages_alone_per_s": {"read_bmp_decode": round(read, 1), "preprocess": round(pre, 1),
                               "interpreter_invoke": round(invoke, 1)},
        "naive_sequential_loop_per_s": round(naive, 1),
        "pipeline_capacity": capacity,
        "pipeline_at_line_rate": line,
        "naive_loop_in_processes_at_line_rate": floor,
        "latency_at_slower_lines": [{"share_of_slowest_stage": share} | {k: run[k] for k in (
            "offered_per_s", "not_inspected", "latency_p50_ms", "latency_p99_ms")} for share, run in slower.items()],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    result["per_frame_whole_and_tiles"] = tiles_per_frame(clf, frames[0], n)
    # last, after peak RSS: TensorFlow would count in the box's memory otherwise
    result["backbones_int8_invoke_cpu"] = backbone_invoke(h, n)
    result["ratios"] = {
        "capacity_vs_slowest_stage": round(capacity["inspected_per_s"] / slowest, 3),
        "capacity_vs_naive": round(capacity["inspected_per_s"] / naive, 3),
        "p99_over_p50_at_line_rate": round(line["latency_p99_ms"] / max(1e-9, line["latency_p50_ms"]), 2),
    }
    r = result["ratios"]
    result["targets"] = {"capacity_vs_slowest_stage": 0.8, "capacity_vs_naive": 1.3, "p99_over_p50_max": 2.0,
                         "every_part_inspected_at_line_rate": True}
    result["meets_targets"] = (r["capacity_vs_slowest_stage"] >= 0.8 and r["capacity_vs_naive"] >= 1.3
                               and r["p99_over_p50_at_line_rate"] <= 2.0 and line["not_inspected"] == 0)
    return result
