"""Training quality of the default recipe, printed as JSON:

- `qc synth --count 3000 --seed 1`: binary F1 on test, defect recall and false rejects at the threshold
  chosen on val for 99 % recall, pointing-game hit rate, training wall time.
- the real magnetic-tile photos in ../shared/datasets/: accuracy, macro F1, defect recall on a held-out split,
  with no flags either (the recipe chooses tiles there, see training/recipe.py).

Baseline in the same run: always answering "defect" (recall 1.0, the false-reject rate it costs).

    python -m bench.train_quality [--runs DIR]     # DIR keeps the data and runs; finished runs are reused
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.record import emit  # noqa: E402
from training.config import TARGET_RECALL, TrainConfig  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.synth import SynthConfig, generate  # noqa: E402
from training.train import train  # noqa: E402

TILES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile"


def one(data: Path, out: Path, **overrides) -> dict:
    """Train and evaluate `out` with the default recipe and `overrides`, unless it holds a finished run of
    exactly that recipe and data (then its figures are read back: a run folder is kept, and reused)."""
    cfg = TrainConfig(data=data, out=out, **overrides)
    if finished(out, cfg) is None:
        with contextlib.redirect_stdout(sys.stderr):  # progress lines on stderr, the JSON alone on stdout
            train(cfg)
            evaluate(out, data, target_recall=TARGET_RECALL)
    return finished(out, cfg)


def finished(run: Path, cfg: TrainConfig) -> dict | None:
    """The figures of the finished, evaluated run in `run` if it was trained with `cfg`'s recipe, else None."""
    try:
        saved = json.loads((run / "config.json").read_text())
        m = json.loads((run / "eval" / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    recipe = cfg.model_dump(mode="json", exclude={"data", "out"})
    if ("train_seconds" not in saved or Path(saved["data"]).resolve() != Path(cfg.data).resolve()
            or not _same(recipe, saved)):
        return None
    t = m["threshold"]
    return {"train_wall_s": round(saved["train_seconds"], 1), "epochs": saved["epochs_run"],
            "accuracy": round(m["accuracy"], 4),
            "macro_f1": round(m["macro_f1"], 4), "binary_f1": round(m["binary_argmax"]["f1"], 4),
            "binary_f1_at_threshold": round(t["test"]["f1"], 4),
            "roc_auc": round(m["roc_auc"], 4), "threshold": round(t["value"], 4),
            "test_defect_recall_at_threshold": round(t["test"]["recall"], 4),
            "test_false_reject_rate_at_threshold": round(t["test"]["false_reject_rate"], 4),
            "pointing_game": m.get("pointing_game", {}).get("hit_rate"),
            "baseline_reject_all": {"recall": 1.0, "false_reject_rate": 1.0},
            "data_sha256": saved["dataset"]["manifest_sha256"]}


def _same(asked: dict, saved: dict) -> bool:
    """Whether a saved run's settings are those asked for; a setting left to the recipe (None) matches the
    value the recipe chose for it."""
    return all(_same(v, saved.get(k) or {}) if isinstance(v, dict) else v is None or saved.get(k) == v
               for k, v in asked.items())


SYNTHETIC_TARGETS = {"binary_f1": 0.98, "recall_at_threshold": 0.99, "false_rejects_max": 0.03, "pointing_game": 0.8}


def meets_synthetic_targets(s: dict) -> bool:
    """One synthetic run's figures (from `one`) against the synthetic targets."""
    t = SYNTHETIC_TARGETS
    return (s["binary_f1"] >= t["binary_f1"] and s["test_defect_recall_at_threshold"] >= t["recall_at_threshold"]
            and s["test_false_reject_rate_at_threshold"] <= t["false_rejects_max"]
            and (s["pointing_game"] or 0) >= t["pointing_game"])


TILE_TARGETS = {"accuracy": 0.97, "recall_at_threshold": 0.99, "false_rejects_max": 0.05}


def meets_tile_targets(r: dict | None) -> bool:
    """One magnetic-tile run's figures against #23's targets (True when the tiles were skipped)."""
    t = TILE_TARGETS
    return r is None or (r["accuracy"] >= t["accuracy"] and r["test_defect_recall_at_threshold"] >= t["recall_at_threshold"]
                         and r["test_false_reject_rate_at_threshold"] <= t["false_rejects_max"])


def synthetic(runs: Path, count: int = 3000) -> Path:
    """`qc synth --count COUNT --seed 1` in runs/synthetic-COUNT, unless it is there."""
    out = runs / f"synthetic-{count}"
    if not (out / "dataset.json").is_file():
        generate(out, SynthConfig(count=count, seed=1))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--skip-tiles", action="store_true")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's)")
    p.add_argument("--runs", type=Path, help="keep the data and run folders here, and reuse finished runs")
    a = p.parse_args(argv)
    d = TrainConfig(data=".", out=".")
    result = {"module": "bench.train_quality", "benchmark": "train_quality",
              "recipe": {"defaults of": "qc train", "arch": d.arch, "alpha": d.alpha, "steps": d.steps,
                         "lr_schedule": d.lr_schedule, "weights": d.weights}}
    with tempfile.TemporaryDirectory() as tmp:
        runs = a.runs or Path(tmp)
        synth = synthetic(runs, a.count)
        steps = {"steps": a.steps} if a.steps else {}
        result["synthetic"] = one(synth, runs / "synthetic-default", **steps)
        if not a.skip_tiles and TILES.is_dir():
            result["magnetic_tile"] = one(TILES, runs / "magnetic_tile-default", **steps)
    s = result["synthetic"]
    result["targets"] = SYNTHETIC_TARGETS | {"train_wall_s_max": 600} | {f"magnetic_tile_{k}": v for k, v in
                                                                        TILE_TARGETS.items()}
    result["meets_targets"] = (meets_synthetic_targets(s) and s["train_wall_s"] <= 600
                               and meets_tile_targets(result.get("magnetic_tile")))
    return emit(result)


if __name__ == "__main__":
    main()
