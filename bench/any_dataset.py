"""One recipe for any dataset: `qc train --data DIR --out RUN` with no other flag, on the magnetic-tile photos
(where the recipe chooses tiles) and on `qc synth --count 3000 --seed 1` (whole images), three training seeds
each; on the tiles the same seeds again with `--tiles off`, to show what tiling brings. Prints JSON: each run's
figures and, per data set and variant, the mean and the worst seed, against #23's targets.

    python -m bench.any_dataset --runs DIR     # trains what DIR lacks: about 3 h on 2 cores

Run folders are DIR/<data>-<variant>-s<seed>; a finished, evaluated run of the same settings and data is
reused (so an interrupted benchmark continues where it stopped).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.default_backbone import SEEDS, compare  # noqa: E402
from bench.record import emit  # noqa: E402
from bench.train_quality import (  # noqa: E402
    SYNTHETIC_TARGETS,
    TILE_TARGETS,
    TILES,
    meets_synthetic_targets,
    meets_tile_targets,
    synthetic,
)

VARIANTS = {"magnetic_tile": {"default": {}, "whole-photos": {"tiles": "off"}}, "synthetic": {"default": {}}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, required=True, help="folder of the data and run folders (kept, and reused)")
    p.add_argument("--only", choices=list(VARIANTS), help="one data set")
    a = p.parse_args(argv)
    folders = {"magnetic_tile": TILES, "synthetic": None}
    data = {}
    for name, variants in VARIANTS.items():
        if a.only in (None, name) and (name != "magnetic_tile" or TILES.is_dir()):
            data[name] = (folders[name] or synthetic(a.runs), variants)
    result = {"module": "bench.any_dataset", "benchmark": "any_dataset", "seeds": list(SEEDS),
              "targets": {"magnetic_tile": TILE_TARGETS, "synthetic": SYNTHETIC_TARGETS}, **compare(a.runs, data)}
    result["meets_targets"] = (
        all(meets_tile_targets(r) for r in result.get("magnetic_tile", {}).get("default", {}).get("seeds", {}).values())
        and all(meets_synthetic_targets(r) for r in result.get("synthetic", {}).get("default", {}).get("seeds", {}).values()))
    return emit(result)


if __name__ == "__main__":
    main()
