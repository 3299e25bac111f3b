"""`qc synth` and `qc data`: make a dataset, check one."""

from __future__ import annotations

from pathlib import Path

from qc.flags import add_model_flags, given
from qc.registry import command


def _synth_args(p):
    from training.config import SynthConfig

    p.add_argument("out", type=Path, help="new folder for the dataset")
    add_model_flags(p, SynthConfig)


@command("synth", "make a synthetic dataset of textured surfaces with defects and pixel masks", _synth_args)
def synth(a):
    from tqdm import tqdm

    from firmware_io.settings import validated
    from training.config import SynthConfig
    from training.synth import generate

    cfg = validated(SynthConfig, given(a, SynthConfig), "options")
    with tqdm(total=cfg.count, desc="synth", unit="img") as bar:
        manifest = generate(a.out, cfg, progress=lambda done, total: bar.update(done - bar.n))
    return {"out": str(a.out), "counts": manifest["counts"]}


def _data_args(p):
    p.add_argument("data", type=Path, help="dataset folder: DIR/<class>/, DIR/{train,val,test}/<class>/ or MVTec AD")
    p.add_argument("--seed", type=int, default=0, help="seed of the automatic stratified split (default 0)")
    p.add_argument("--skip-bad", action="store_true", help="list unreadable or non-image files and skip them")
    p.add_argument("--good-only", action="store_true", help="as `qc train --good-only` sees it: good photos alone "
                   "are enough, and only the test split's defects are kept")


@command("data", "check a dataset folder and print its summary (images per split and class, sizes)", _data_args)
def data(a):
    from training.data import scan

    return scan(a.data, seed=a.seed, skip_bad=a.skip_bad, good_only=a.good_only).summary()
