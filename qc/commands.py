"""Subcommands of `qc`: each one adds its arguments and runs, importing what it needs when it runs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.errors import QCError

USER_ERRORS = (QCError, FileExistsError, FileNotFoundError, NotADirectoryError)
SPECS: list[Spec] = []


@dataclass
class Spec:
    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], object]
    needs_tf: bool = False


def command(name: str, help: str, needs_tf: bool = False):
    """Register `run` under `name`; its `args` attribute (a function) adds the arguments."""

    def wrap(run):
        SPECS.append(Spec(name, help, getattr(run, "args", lambda p: None), run, needs_tf))
        return run

    return wrap


def args(fn):
    def wrap(run):
        run.args = fn
        return run

    return wrap


# --- data --------------------------------------------------------------------------------------------------


def _synth_args(p):
    from training.synth import DEFECTS

    p.add_argument("out", type=Path, help="new folder for the dataset")
    p.add_argument("--count", type=int, default=1000, help="number of images in all (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical output")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128, minimum 32)")
    p.add_argument("--classes", nargs="+", default=list(DEFECTS), metavar="CLASS",
                   help=f"defect classes to make (default all: {' '.join(DEFECTS)})")
    p.add_argument("--good-fraction", type=float, default=0.5, help="share of defect-free parts (default 0.5)")


@command("synth", "make a synthetic dataset of textured surfaces with defects and pixel masks")
@args(_synth_args)
def synth(a):
    from tqdm import tqdm

    from training.synth import SynthConfig, generate

    cfg = SynthConfig(count=a.count, seed=a.seed, size=a.size, classes=a.classes, good_fraction=a.good_fraction)
    cfg.validate()
    with tqdm(total=a.count, desc="synth", unit="img") as bar:
        manifest = generate(a.out, cfg, progress=lambda done, total: bar.update(done - bar.n))
    return {"out": str(a.out), "counts": manifest["counts"]}


def _data_args(p):
    p.add_argument("data", type=Path, help="dataset folder: DIR/<class>/, DIR/{train,val,test}/<class>/ or MVTec AD")
    p.add_argument("--seed", type=int, default=0, help="seed of the automatic stratified split")
    p.add_argument("--skip-bad", action="store_true", help="list unreadable or non-image files and skip them")


@command("data", "check a dataset folder and print its summary (images per split and class, sizes)")
@args(_data_args)
def data(a):
    from training.data import scan

    return scan(a.data, seed=a.seed, skip_bad=a.skip_bad).summary()


# --- training ----------------------------------------------------------------------------------------------


def _train_args(p):
    p.add_argument("--data", type=Path, help="dataset folder (see `qc data`)")
    p.add_argument("--out", type=Path, help="new run folder")
    p.add_argument("--config", type=Path, help="YAML file of settings; options given here override it")
    p.add_argument("--arch", choices=["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"],
                   help="backbone (default mobilenet_v3_small)")
    p.add_argument("--alpha", type=float, help="width multiplier (default 1.0 for MobileNetV3, 0.35 for V2)")
    p.add_argument("--input-size", type=int, help="model input side in pixels (default 96)")
    p.add_argument("--weights", help="none (default, from scratch) | imagenet | path to a weights file")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 55)")
    p.add_argument("--head-epochs", type=int, help="epochs with a frozen pretrained backbone (default 5)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["adam", "sgd", "rmsprop"])
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--fine-tune-learning-rate", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--pooling", choices=["max", "avg"], help="global pooling (default avg; max can help with tiny defects)")
    p.add_argument("--no-class-weights", dest="class_weights", action="store_false", default=None,
                   help="do not weight classes by inverse frequency")
    p.add_argument("--mask-supervision", type=float,
                   help="weight of the activation-map loss on images with masks (default 1; 0 turns it off)")
    p.add_argument("--patience", type=int,
                   help="early stopping patience (epochs; default: the whole run with cosine, 8 with plateau)")
    p.add_argument("--label-smoothing", type=float,
                   help="share of each label spread over all classes (default 0.1; 0 turns it off): less overconfident scores")
    p.add_argument("--lr-schedule", choices=["plateau", "cosine"],
                   help="cosine (default): decay the rate to zero over the epochs; plateau: cut it when val loss stalls")
    p.add_argument("--steps-per-epoch", type=int, help="cap batches per epoch (quick runs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--skip-bad", action="store_true", default=None, help="skip unreadable images")
    p.add_argument("--init-from", type=Path, help="continue from RUN/model.keras (retrain with new labels)")
    p.add_argument("--no-augment", action="store_true", help="turn every augmentation off")
    p.add_argument("--translation", type=float,
                   help="max random shift as a fraction of the size (default 0.2; the rest of `augment:` stays)")


@command("train", "train a MobileNet defect classifier (one line per epoch); writes RUN/model.keras and plots",
         needs_tf=True)
@args(_train_args)
def train(a):
    from edge.config import load_yaml, validated
    from training.train import TrainConfig
    from training.train import train as run_training

    values = load_yaml(a.config) if a.config else {}
    skip = {"config", "cmd", "_spec", "no_augment", "translation"}
    values.update({k: v for k, v in vars(a).items() if k not in skip and v is not None})
    if a.no_augment:
        values["augment"] = {"rotation": 0, "translation": 0, "flip": False, "zoom": 0, "brightness": 0,
                             "contrast": 0}
    if a.translation is not None:
        values["augment"] = {**(values.get("augment") or {}), "translation": a.translation}
    for key in ("data", "out"):
        if key not in values:
            raise QCError(f"--{key} is required (on the command line or in --config)")
    record = run_training(validated(TrainConfig, values, str(a.config or "options")))
    return f"run {record['out']}: {record['epochs_run']} epochs, {record['train_seconds']}s"


def _evaluate_args(p):
    p.add_argument("run", type=Path, help="run folder written by `qc train`")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (the same classes as the run)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to report on")
    p.add_argument("--target-recall", type=float, default=0.99,
                   help="defect recall the reject threshold must reach on the validation split (default 0.99)")


@command("evaluate", "metrics, a reject threshold for a target defect recall, plots and RUN/eval/report.html",
         needs_tf=True)
@args(_evaluate_args)
def evaluate(a):
    from training.evaluate import evaluate as run_eval

    if not 0 < a.target_recall <= 1:
        raise QCError(f"--target-recall must be in (0, 1], got {a.target_recall}")
    m = run_eval(a.run, a.data, a.split, a.target_recall)
    t = m["threshold"]
    return (f"{a.split}: accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, binary F1 "
            f"{m['binary_argmax']['f1']:.4f}, ROC AUC {m['roc_auc']:.4f}\n"
            f"threshold {t['value']:.4f} (val recall {t['val']['recall']:.4f}): test recall {t['test']['recall']:.4f}, "
            f"false rejects {100 * t['test']['false_reject_rate']:.2f}%\n"
            f"pointing game: {m.get('pointing_game', {}).get('hit_rate', 'n/a')}\n"
            f"report: {a.run / 'eval' / 'report.html'}")


def _explain_args(p):
    p.add_argument("run", type=Path, help="run folder written by `qc train`")
    p.add_argument("images", type=Path, nargs="+", help="image files")
    p.add_argument("--out", type=Path, help="folder for the overlays (default RUN/explain)")


@command("explain", "write class-activation heatmap overlays: where the model sees a defect", needs_tf=True)
@args(_explain_args)
def explain(a):
    from training.evaluate import explain as run_explain

    return "\n".join(str(p) for p in run_explain(a.run, a.images, a.out or a.run / "explain"))


# --- export and bundles ------------------------------------------------------------------------------------


def _export_args(p):
    p.add_argument("run", type=Path, help="run folder (trained, ideally evaluated: the threshold comes from it)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--int8", dest="mode", action="store_const", const="int8",
                      help="full-integer quantization (default)")
    mode.add_argument("--float16", dest="mode", action="store_const", const="float16")
    mode.add_argument("--float32", dest="mode", action="store_const", const="float32")
    p.add_argument("--io", choices=["uint8", "int8"], default="uint8", help="int8 model input/output type")
    p.add_argument("--representative", type=int, default=200, help="calibration images from the train split")
    p.add_argument("--per-tensor", action="store_true",
                   help="one scale per weight tensor instead of per channel: a smaller file, checked for accuracy")
    p.add_argument("--qat", type=int, default=0, metavar="EPOCHS",
                   help="quantization-aware fine-tuning for EPOCHS epochs before converting (0: post-training "
                        "quantization only); recovers the F1 that int8 rounding costs a small model")
    p.add_argument("--data", type=Path, help="dataset (default: the one the run was trained on)")
    p.add_argument("--max-drop", type=float, default=0.01, help="largest allowed loss of binary F1 or recall")
    p.add_argument("--allow-drop", action="store_true", help="export even when the quantized model loses more")
    p.add_argument("--edgetpu", action="store_true", help="check Edge TPU ops and run edgetpu_compiler if present")
    p.add_argument("--force", action="store_true", help="replace an existing bundle folder")


@command("export", "quantize to int8 (with a CAM output), check against float, write a model bundle",
         needs_tf=True)
@args(_export_args)
def export(a):
    from training.export import export as run_export

    if a.representative < 1:
        raise QCError("--representative must be at least 1")
    if a.qat < 0:
        raise QCError("--qat must be 0 (off) or a number of epochs")
    return run_export(a.run, a.out, a.mode or "int8", a.io, a.representative, a.max_drop, a.allow_drop,
                      a.edgetpu, a.force, a.data, per_channel=not a.per_tensor, qat_epochs=a.qat)


def _bundle_args(p):
    p.add_argument("action", choices=["verify", "show"], help="verify: sha256, version, tensors, one inference")
    p.add_argument("bundle", type=Path)


@command("bundle", "verify a model bundle or show its card")
@args(_bundle_args)
def bundle(a):
    import numpy as np

    from edge.bundle import load_bundle
    from edge.classifiers import make_classifier

    b = load_bundle(a.bundle)
    if a.action == "show":
        m = b.meta
        lines = [f"{m['name']} (format {m['format_version']}, created {m['created']})",
                 f"model     {b.model_path.name}  sha256 {m['sha256']}",
                 f"labels    {m['labels']}",
                 f"input     {m['input']['shape']} {m['input']['dtype']} scale {m['input']['scale']} "
                 f"zero point {m['input']['zero_point']} {m['input'].get('color')} resize {m['input'].get('resize')}",
                 f"threshold {m['threshold']['value']:.4f} ({m['threshold'].get('method')})",
                 f"quantize  {json.dumps(m.get('quantization'))}",
                 f"training  {json.dumps(m['training'])}",
                 f"metrics   {json.dumps(m['metrics'])}"]
        return "\n".join(lines)
    clf = make_classifier(b, "cpu")
    h, w = b.input_size
    result = clf.infer(np.full((h, w, 3), 128, np.uint8))
    return {"bundle": str(a.bundle), "ok": True, "sha256": b.sha256, "labels": b.labels,
            "gray_frame_scores": [round(float(s), 4) for s in result.scores]}


# --- edge --------------------------------------------------------------------------------------------------


def _run_args(p):
    p.add_argument("--config", type=Path, help="edge YAML (see deploy/edge.example.yaml)")
    p.add_argument("--bundle", type=Path, help="model bundle folder (overrides the config)")
    p.add_argument("--source", help="folder, video file, camera index, /dev/videoN or rtsp:// URL")
    p.add_argument("--rate", type=float, help="folder/video source: parts per second")
    p.add_argument("--gpio", choices=["sim", "rpi"], help="GPIO backend")
    p.add_argument("--mqtt", help="broker URL, e.g. mqtt://127.0.0.1:1883 (turns telemetry on)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--max-parts", type=int, help="stop after this many parts")
    p.add_argument("--events", type=Path, help="also append every inspection event to this JSONL file")


def _source_kind(src: str) -> str:
    if src.isdigit() or src.startswith("/dev/video"):
        return "camera"
    if "://" in src:
        return "stream"
    return "folder" if Path(src).is_dir() else "video"


def edge_config(a):
    from edge.config import load_config

    overrides = {}
    if a.bundle:
        overrides["bundle"] = str(a.bundle)
    if a.source:
        overrides.update({"source.path": a.source, "source.kind": _source_kind(a.source)})
    if a.rate:
        overrides["source.rate_hz"] = a.rate
    if a.gpio:
        overrides["gpio.backend"] = a.gpio
    if a.mqtt:
        overrides.update({"mqtt.url": a.mqtt, "mqtt.enabled": True})
    return load_config(a.config, overrides)


@command("run", "inspect parts on a camera box: frames -> int8 model -> pass/reject -> gate, MQTT, stats")
@args(_run_args)
def run(a):
    import signal

    runtime = make_runtime(edge_config(a), a.events)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: runtime.stop_event.set())
    final = runtime.run(duration=a.duration, max_parts=a.max_parts)
    return final


def make_runtime(cfg, events: Path | None = None):
    """The runtime with its telemetry: MQTT when enabled (taking commands unless turned off), in memory
    otherwise, and every inspection also appended to `events` (JSONL) when given."""
    from edge.pipeline import Runtime
    from edge.telemetry import MemoryTelemetry

    mqtt = None
    telemetry = MemoryTelemetry()
    if cfg.mqtt.enabled:
        from firmware_io.mqtt.client import MQTTTelemetry

        telemetry = mqtt = MQTTTelemetry(cfg.mqtt, cfg.line, cfg.station)
    if events:
        telemetry = JsonlTee(telemetry, events)
    runtime = Runtime(cfg, telemetry)
    if mqtt and cfg.mqtt.commands:
        mqtt.on_command(runtime.command)
    return runtime


class JsonlTee:
    """Passes events on and appends each inspection to a JSONL file (for scripts and the demo)."""

    def __init__(self, inner, path: Path):
        self.inner, self.file = inner, open(path, "a", buffering=1)

    def inspection(self, event):
        self.inner.inspection(event)  # spooled first: a line in the file is an event that will be delivered
        self.file.write(json.dumps(event) + "\n")

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def close(self):
        self.inner.close()
        self.file.close()


def _config_args(p):
    p.add_argument("action", choices=["check"], help="check: validate without running")
    p.add_argument("file", type=Path, help="edge YAML file")


@command("config", "validate an edge config file; a typo or bad value names the key")
@args(_config_args)
def config(a):
    from edge.config import load_config

    cfg = load_config(a.file)
    return f"{a.file}: ok (bundle {cfg.bundle}, source {cfg.source.kind} {cfg.source.path!r}, gpio {cfg.gpio.backend})"


def _review_args(p):
    p.add_argument("store", type=Path, help="reject store folder (store.dir of the edge config)")
    p.add_argument("--into", type=Path, required=True, help="dataset folder to file the frames into")
    p.add_argument("--label", help="class for every frame")
    p.add_argument("--labels", type=Path, help='JSON {"<frame id>": "<class>"} for frame-by-frame labels')
    p.add_argument("--split", default="train", help="split folder to use when the dataset has splits")


@command("review", "file stored reject frames into a dataset's class folders, for `qc train --init-from`")
@args(_review_args)
def review(a):
    from edge.store import review as run_review

    return run_review(a.store, a.into, a.label, a.labels, a.split)


# --- telemetry ---------------------------------------------------------------------------------------------


def _broker_args(p):
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")


@command("broker", "run the embedded MQTT broker (amqtt) on loopback: the demo's default")
@args(_broker_args)
def broker(a):
    import threading

    from firmware_io.mqtt.broker import EmbeddedBroker

    with EmbeddedBroker(a.port, a.host) as b:
        print(f"broker listening on {b.url}", flush=True)
        try:
            threading.Event().wait(a.duration)  # None: until Ctrl-C
        except KeyboardInterrupt:
            pass
    return "broker stopped"


def _collect_args(p):
    p.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="broker URL")
    p.add_argument("--db", type=Path, default=Path("telemetry.sqlite"), help="SQLite file to fill")
    p.add_argument("--root", default="qc", help="topic root to subscribe to (ROOT/#)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")


@command("collect", "subscribe to qc/# and store inspections (deduplicated by id), stats and alarms")
@args(_collect_args)
def collect(a):
    import signal
    import threading
    import time

    from firmware_io.mqtt.collector import Collector
    from firmware_io.mqtt.config import MQTTConfig

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    col = Collector(MQTTConfig(url=a.mqtt), a.db, a.root).start()
    print(f"collecting {a.root}/# from {a.mqtt} into {a.db}", flush=True)
    t_end = time.monotonic() + a.duration if a.duration else None
    while not stop.wait(0.2) and not (t_end and time.monotonic() > t_end):
        pass
    col.stop()
    return col.counts


def _report_args(p):
    p.add_argument("--db", type=Path, default=Path("telemetry.sqlite"), help="the collector's SQLite file")
    p.add_argument("--out", type=Path, default=Path("report.html"))


@command("report", "yield report (HTML with plots) from the collector's database")
@args(_report_args)
def report(a):
    from training.telemetry_report import report as run_report

    return run_report(a.db, a.out)


def _bench_args(p):
    p.add_argument("--bundle", type=Path, required=True, help="model bundle to measure")
    p.add_argument("--frames", type=int, default=200, help="frames per stage measurement")
    p.add_argument("--threads", type=int, help="LiteRT CPU threads per interpreter (default: as qc run)")
    p.add_argument("--workers", type=int, help="pipeline workers (default: as qc run)")
    p.add_argument("--seconds", type=float, default=5.0, help="how long each pipeline run is measured, after a 1 s warm-up")


@command("bench", "benchmark the edge pipeline on 640x480 frames against its stages and a naive loop (JSON)")
@args(_bench_args)
def bench(a):
    from edge.benchmark import run_benchmark

    return run_benchmark(a.bundle, a.frames, a.threads, a.seconds, a.workers)


def _demo_args(p):
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for everything (replaced)")
    p.add_argument("--quick", action="store_true", help="a small dataset and a few epochs: under a minute or two")
    p.add_argument("--seed", type=int, default=1)


@command("demo", "the whole system end to end: synth, train, evaluate, export, broker, run, report", needs_tf=True)
@args(_demo_args)
def demo(a):
    from qc.demo import run_demo

    run_demo(a.out, a.quick, a.seed)


def _package_args(p):
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True, help="edge YAML for the box")
    p.add_argument("--unit", type=Path, default=Path(__file__).resolve().parents[1] / "deploy" / "qc-inspect.service")
    p.add_argument("--out", type=Path, required=True, help="box.tar.gz to write")


@command("package", "pack what a box needs (bundle, config, systemd unit) into a tar.gz with SHA256SUMS")
@args(_package_args)
def package(a):
    import hashlib
    import io
    import tarfile

    from edge.bundle import load_bundle
    from edge.config import load_config

    load_bundle(a.bundle)  # refuse to ship a broken bundle
    load_config(a.config, {"bundle": str(a.bundle)})
    files = {f"bundle/{p.name}": p for p in sorted(a.bundle.iterdir()) if p.is_file()}
    files |= {"edge.yaml": a.config, "qc-inspect.service": a.unit}
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {name}\n" for name, p in files.items())
    with tarfile.open(a.out, "w:gz") as tar:
        for name, p in files.items():
            tar.add(p, arcname=f"qc-box/{name}")
        info = tarfile.TarInfo("qc-box/SHA256SUMS")
        info.size = len(sums)
        tar.addfile(info, io.BytesIO(sums.encode()))
    return {"package": str(a.out), "files": list(files) + ["SHA256SUMS"],
            "sha256": hashlib.sha256(a.out.read_bytes()).hexdigest(),
            "on the box": "tar xzf box.tar.gz && cd qc-box && sha256sum -c SHA256SUMS && qc bundle verify bundle"}
