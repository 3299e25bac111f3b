"""The default backbone against the one it replaced, each trained with the default recipe and no other
setting, on three training seeds (each seed draws its own split from the data, the same for both
backbones): does the backbone the Edge TPU runs whole lose accuracy on real surfaces? On the magnetic-tile
photos both are trained; on `qc synth --count 3000 --seed 1` the default alone, against the synthetic
targets. Prints JSON: each run's figures and, per data set and backbone, the mean and the worst seed.

    python -m bench.default_backbone --runs DIR     # trains what DIR lacks: about 2 h on 2 cores

A run folder DIR/<data>-<arch>-s<seed> that holds a finished, evaluated run of that recipe and data is
reused (so runs of `qc train --data D --out DIR/<data>-<arch>-s<seed> --arch A --seed S` and `qc evaluate`
count, and an interrupted comparison continues where it stopped).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.edge_pipeline import PREVIOUS_DEFAULT_ARCH  # noqa: E402
from bench.record import emit  # noqa: E402
from bench.train_quality import TILES, meets_synthetic_targets, one, synthetic  # noqa: E402
from training.config import TrainConfig  # noqa: E402

SEEDS = (0, 1, 2)
SUMMARY = ("accuracy", "binary_f1", "roc_auc", "test_defect_recall_at_threshold",
           "test_false_reject_rate_at_threshold", "train_wall_s")


def compare(runs: Path, data: dict[str, tuple[Path, dict[str, dict]]], seeds=SEEDS, **recipe) -> dict:
    """`data`: name -> (folder, variants: label -> settings beyond the defaults); `recipe`: settings for every
    run (none for the benchmarks). Each run goes to runs/<name>-<label>-s<seed>."""
    result = {}
    for name, (folder, variants) in data.items():
        result[name] = {}
        for label, settings in variants.items():
            per_seed = {seed: one(folder, runs / f"{name}-{label}-s{seed}", seed=seed, **recipe | settings)
                        for seed in seeds}
            result[name][label] = {
                "seeds": per_seed,
                "mean": {k: round(sum(r[k] for r in per_seed.values()) / len(per_seed), 4) for k in SUMMARY},
                "worst": {k: (max if "false_reject" in k or "wall" in k else min)(r[k] for r in per_seed.values())
                          for k in SUMMARY}}
        # a split is drawn from the data and the seed: the same data and seed give every variant the same split
        hashes = {result[name][v]["seeds"][seed]["data_sha256"] for v in variants for seed in seeds}
        result[name]["same_data_for_every_variant"] = len(hashes) == 1
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, required=True, help="folder of the data and run folders (kept, and reused)")
    p.add_argument("--skip-tiles", action="store_true")
    a = p.parse_args(argv)
    default = TrainConfig.model_fields["arch"].default
    both = [default, PREVIOUS_DEFAULT_ARCH]
    data = {"synthetic": (synthetic(a.runs), {default: {"arch": default}})} | (
        {} if a.skip_tiles or not TILES.is_dir() else {"magnetic_tile": (TILES, {arch: {"arch": arch} for arch in both})})
    result = {"module": "bench.default_backbone", "benchmark": "default_backbone", "default": default,
              "previous_default": PREVIOUS_DEFAULT_ARCH, "seeds": list(SEEDS), **compare(a.runs, data)}
    result["meets_targets"] = meets_targets(result)
    return emit(result)


def meets_targets(r: dict) -> bool:
    """The synthetic targets on every seed; on the real tiles (where present) a mean accuracy and ROC AUC at
    least the previous default's. Training times are reported, not judged: they depend on the machine and
    on what else it runs."""
    new, old = r["default"], r["previous_default"]
    ok = all(meets_synthetic_targets(s) for s in r["synthetic"][new]["seeds"].values())
    if "magnetic_tile" in r:
        tiles = {arch: r["magnetic_tile"][arch]["mean"] for arch in (new, old)}
        ok &= all(tiles[new][k] >= tiles[old][k] for k in ("accuracy", "roc_auc"))
    return bool(ok)


if __name__ == "__main__":
    main()
