"""Shared fixtures: small synthetic datasets made once per session, in pytest's temporary folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.bundle import card_sha256
from training.synth import SynthConfig, generate


@pytest.fixture(scope="session")
def synth32(tmp_path_factory):
    """A tiny 32x32 synthetic dataset (split layout, with masks)."""
    out = tmp_path_factory.mktemp("synth32") / "data"
    generate(out, SynthConfig(count=120, seed=3, size=32))
    return out


@pytest.fixture(scope="session")
def synth64(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth64") / "data"
    generate(out, SynthConfig(count=160, seed=5, size=64))
    return out


TINY = dict(input_size=32, alpha=0.35, epochs=2, steps_per_epoch=2, batch_size=16, seed=11, patience=5)


@pytest.fixture(scope="session")
def tiny_run(synth32, tmp_path_factory):
    """The default MobileNet (V3-Small minimalistic, narrowed) trained for a few steps on 32x32 images: enough to test the plumbing."""
    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(data=synth32, out=out, **TINY))
    return out


@pytest.fixture(scope="session")
def bundle_dir(tiny_run, tmp_path_factory):
    """The tiny run exported to an int8 bundle."""
    from training.export import export

    out = tmp_path_factory.mktemp("bundle") / "b"
    export(tiny_run, out, representative=32, allow_drop=True)
    return out


def write_card(bundle: Path, card: dict) -> None:
    """Write a card as an exporter would, its card_sha256 computed again (format 2)."""
    if card.get("format_version", 2) >= 2:
        card = card | {"card_sha256": card_sha256(card)}
    (bundle / "model.json").write_text(json.dumps(card))
