"""Deploy files: every example config passes `qc config check`; `qc package` ships a verified bundle."""

import hashlib
import tarfile
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge.config import load_config
from qc.cli import main

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.mark.parametrize("name", ["edge.example.yaml", "pi.yaml", "jetson.yaml", "coral.yaml", "gige.yaml"])
def test_example_configs_are_valid(name, capsys):
    """Valid everywhere; where the camera's library is not installed (Picamera2 off a Pi), the one error
    names it and what to install."""
    code, out = main(["config", "check", str(DEPLOY / name)]), capsys.readouterr()
    kind = load_config(DEPLOY / name).source.kind
    if code == 0:
        assert ": ok" in out.out
    else:
        assert code == 2 and f"source.kind {kind} needs" in out.err and "apt install" in out.err


def test_a_pi_config_runs_the_kernels_gpio_by_default(monkeypatch):
    from firmware_io.gpio import resolve

    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    monkeypatch.setattr("sys.platform", "linux")
    assert resolve(load_config(DEPLOY / "pi.yaml").gpio.backend) == "gpiod"


def test_example_config_documents_every_field():
    text = (DEPLOY / "edge.example.yaml").read_text()
    cfg = load_config(DEPLOY / "edge.example.yaml")
    for section, model in cfg:
        assert f"{section}:" in text
        if isinstance(model, BaseModel):
            for field in type(model).model_fields:
                assert f"{field}:" in text, f"{section}.{field} is not in edge.example.yaml"


def test_config_check_names_a_bad_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((DEPLOY / "pi.yaml").read_text().replace("delay_ms: 350", "dellay_ms: 350"))
    assert main(["config", "check", str(bad)]) == 2
    assert "gpio.gate.dellay_ms" in capsys.readouterr().err


def test_package_ships_bundle_config_unit_with_checksums(bundle_dir, tmp_path, capsys):
    out = tmp_path / "box.tar.gz"
    assert main(["package", "--bundle", str(bundle_dir), "--config", str(DEPLOY / "pi.yaml"), "--out", str(out)]) == 0
    with tarfile.open(out) as tar:
        names = tar.getnames()
        sums = tar.extractfile("qc-box/SHA256SUMS").read().decode().splitlines()
        for line in sums:
            digest, name = line.split("  ")
            assert hashlib.sha256(tar.extractfile(f"qc-box/{name}").read()).hexdigest() == digest
    assert {"qc-box/bundle/model.tflite", "qc-box/bundle/model.json", "qc-box/edge.yaml",
            "qc-box/qc-inspect.service"} <= set(names)
    # a Coral's config with a bundle that has no compiled model is refused on the workstation, with the remedy
    assert main(["package", "--bundle", str(bundle_dir), "--config", str(DEPLOY / "coral.yaml"),
                 "--out", str(tmp_path / "coral.tar.gz")]) == 2
    assert not (tmp_path / "coral.tar.gz").exists() and "qc bundle compile" in capsys.readouterr().err
