"""Good-only training (#29): `qc train --good-only` learns from the good photos of the train split alone
(defects painted on them), its threshold set by the good validation photos; `qc evaluate` then meets the test
split's real defects. On the magnetic-tile photos (with `--tiles on`: a user who knows the defects are small)
and on `qc synth --count 3000 --seed 1`, three training seeds each, every run also exported to int8. Prints
JSON: per run, image ROC AUC, defect recall at 1 % and 3 % false rejects (on the test split's own good
photos), recall and false rejects at the threshold chosen from good photos, recall by kind of defect, and the
int8 model's ROC AUC beside the float model's; per data set the mean and the worst seed.

    python -m bench.good_only --runs DIR [--steps N]     # trains what DIR lacks

Baseline in the same run: a score that knows nothing (ROC AUC 0.5, recall at x % false rejects x %).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.default_backbone import SEEDS  # noqa: E402
from bench.record import emit  # noqa: E402
from bench.train_quality import TILES, finished, synthetic  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.export import export  # noqa: E402
from training.train import train  # noqa: E402

GOALS = {"roc_auc": 0.95, "recall_at_3pct": 0.9, "int8_auc_drop_max": 0.01}
SUMMARY = ("roc_auc", "recall_at_1pct", "recall_at_3pct", "int8_roc_auc", "test_defect_recall_at_threshold",
           "test_false_reject_rate_at_threshold", "train_wall_s")
VARIANTS = {"magnetic_tile": {"tiles": "on"}, "synthetic": {}}


def one(data: Path, out: Path, **settings) -> dict:
    """Train, evaluate and export `out` good-only, unless it holds that finished run (then it is read back)."""
    cfg = TrainConfig(data=data, out=out, good_only=True, **settings)
    with contextlib.redirect_stdout(sys.stderr):  # progress lines on stderr, the JSON alone on stdout
        if finished(out, cfg) is None:
            train(cfg)
            evaluate(out, data)
        if not (out / "bundle" / "model.json").is_file():
            export(out, out / "bundle", allow_drop=True)
    r = finished(out, cfg)
    m = json.loads((out / "eval" / "metrics.json").read_text())
    lite = json.loads((out / "bundle" / "model.json").read_text())["metrics"]
    return r | {"recall_at_1pct": round(m["recall_at_false_rejects"]["0.01"], 4),
                "recall_at_3pct": round(m["recall_at_false_rejects"]["0.03"], 4),
                "recall_by_kind": {k: round(v, 4) for k, v in m["recall_by_kind"].items()},
                "float_roc_auc_export": round(lite["float"]["roc_auc"], 4),
                "int8_roc_auc": round(lite["int8"]["roc_auc"], 4)}


def meets(r: dict) -> bool:
    return (r["roc_auc"] >= GOALS["roc_auc"] and r["recall_at_3pct"] >= GOALS["recall_at_3pct"]
            and r["float_roc_auc_export"] - r["int8_roc_auc"] <= GOALS["int8_auc_drop_max"])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, required=True, help="folder of the data and run folders (kept, and reused)")
    p.add_argument("--steps", type=int, help="optimizer steps of each run (default: the recipe's)")
    p.add_argument("--only", choices=list(VARIANTS), help="one data set")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    a = p.parse_args(argv)
    steps = {"steps": a.steps} if a.steps else {}
    folders = {"magnetic_tile": TILES if TILES.is_dir() else None, "synthetic": synthetic(a.runs)}
    result = {"module": "bench.good_only", "benchmark": "good_only", "seeds": a.seeds, "goals": GOALS,
              "baseline": {"roc_auc": 0.5, "recall_at_1pct": 0.01, "recall_at_3pct": 0.03}}
    for name, settings in VARIANTS.items():
        if a.only not in (None, name) or folders[name] is None:
            continue
        per_seed = {seed: one(folders[name], a.runs / f"good-only-{name}-s{seed}", seed=seed, **settings | steps)
                    for seed in a.seeds}
        result[name] = {"settings": settings | steps, "seeds": per_seed,
                        "mean": {k: round(sum(r[k] for r in per_seed.values()) / len(per_seed), 4) for k in SUMMARY},
                        "worst": {k: (max if "false_reject" in k or "wall" in k else min)(r[k] for r in per_seed.values())
                                  for k in SUMMARY},
                        "meets_goals": all(meets(r) for r in per_seed.values())}
    result["meets_targets"] = all(result[d]["meets_goals"] for d in VARIANTS if d in result)
    return emit(result)


if __name__ == "__main__":
    main()
