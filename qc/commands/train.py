"""`qc train`, `qc evaluate`, `qc explain`, `qc export` and `qc demo`: the workstation side (TensorFlow)."""

from __future__ import annotations

from pathlib import Path

from qc.flags import add_model_flags, given
from qc.registry import command
from training.config import TARGET_RECALL, AugmentConfig, ExportConfig, TrainConfig
from training.errors import TrainingError

NO_AUGMENT = {name: False if isinstance(f.default, bool) else 0 for name, f in AugmentConfig.model_fields.items()}


def _train_args(p):
    p.add_argument("--config", type=Path, help="YAML file of settings; options given here override it")
    add_model_flags(p, TrainConfig, skip=("augment",))
    p.add_argument("--no-augment", action="store_true", help="turn every augmentation off")
    shift = AugmentConfig.model_fields["translation"]
    p.add_argument("--translation", type=float, help=f"{shift.description}; the rest of `augment:` stays")


@command("train", "train a MobileNet defect classifier (one line per epoch); writes RUN/model.keras and plots",
         _train_args, needs_tf=True)
def train(a):
    from firmware_io.settings import load_yaml, validated
    from training.train import train as run_training

    values = load_yaml(a.config) if a.config else {}
    values.update(given(a, TrainConfig))
    if a.no_augment:
        values["augment"] = NO_AUGMENT
    if a.translation is not None:
        values["augment"] = {**(values.get("augment") or {}), "translation": a.translation}
    for key in ("data", "out"):
        if key not in values:
            raise TrainingError(f"--{key} is required (on the command line or in --config)")
    record = run_training(validated(TrainConfig, values, str(a.config or "options")))
    return f"run {record['out']}: {record['epochs_run']} epochs, {record['train_seconds']}s"


def _evaluate_args(p):
    p.add_argument("run", type=Path, help="run folder written by `qc train`")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (the same classes as the run)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to report on")
    p.add_argument("--target-recall", type=float, default=TARGET_RECALL,
                   help=f"defect recall the reject threshold must reach on the validation split (default {TARGET_RECALL})")


@command("evaluate", "metrics, a reject threshold for a target defect recall, plots and RUN/eval/report.html",
         _evaluate_args, needs_tf=True)
def evaluate(a):
    from training.evaluate import evaluate as run_eval

    if not 0 < a.target_recall <= 1:
        raise TrainingError(f"--target-recall must be in (0, 1], got {a.target_recall}")
    m = run_eval(a.run, a.data, a.split, a.target_recall)
    t = m["threshold"]
    auc = "n/a (no defects in the split)" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
    chosen = (f"{100 * t['val']['false_reject_rate']:.2f}% of {t['val_goods']} good val parts rejected" if m["good_only"]
              else f"val recall {t['val']['recall']:.4f}")
    at = m.get("recall_at_false_rejects", {})
    return (f"{a.split}: accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, binary F1 "
            f"{m['binary_argmax']['f1']:.4f}, ROC AUC {auc}\n"
            + (f"recall at 1% false rejects {at['0.01']:.4f}, at 3% {at['0.03']:.4f}\n" if at else "")
            + f"threshold {t['value']:.4f} ({chosen}): {a.split} recall {t['test']['recall']:.4f}, "
            f"false rejects {100 * t['test']['false_reject_rate']:.2f}%\n"
            f"pointing game: {m.get('pointing_game', {}).get('hit_rate', 'n/a')}\n"
            f"report: {a.run / 'eval' / 'report.html'}")


def _explain_args(p):
    p.add_argument("run", type=Path, help="run folder written by `qc train`")
    p.add_argument("images", type=Path, nargs="+", help="image files")
    p.add_argument("--out", type=Path, help="folder for the overlays (default RUN/explain)")


@command("explain", "write class-activation heatmap overlays: where the model sees a defect", _explain_args,
         needs_tf=True)
def explain(a):
    from training.evaluate import explain as run_explain

    return "\n".join(str(p) for p in run_explain(a.run, a.images, a.out or a.run / "explain"))


def _export_args(p):
    p.add_argument("run", type=Path, help="run folder (trained, ideally evaluated: the threshold comes from it)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    mode = p.add_mutually_exclusive_group()
    for value in ExportConfig.model_fields["mode"].annotation.__args__:
        mode.add_argument(f"--{value}", dest="mode", action="store_const", const=value,
                          help="full-integer quantization (default)" if value == "int8" else None)
    add_model_flags(p, ExportConfig, skip=("mode",))


@command("export", "quantize to int8 (with a CAM output), check against float, write a model bundle",
         _export_args, needs_tf=True)
def export(a):
    from training.export import export as run_export

    return run_export(a.run, a.out, **given(a, ExportConfig))


def _demo_args(p):
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for everything (replaced)")
    p.add_argument("--quick", action="store_true", help="a small dataset and a few epochs: under a minute or two")
    p.add_argument("--seed", type=int, default=1)


@command("demo", "the whole system end to end: synth, train, evaluate, export, broker, run, report", _demo_args,
         needs_tf=True)
def demo(a):
    from qc.demo import run_demo

    run_demo(a.out, a.quick, a.seed)
