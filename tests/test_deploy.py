"""Deploy files: every example config passes `qc config check`; `qc package` ships a verified bundle and the
box installs from the archive alone."""

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge.config import load_config
from qc.cli import main

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.mark.parametrize("name", ["edge.example.yaml", "pi.yaml", "jetson.yaml", "coral.yaml", "gige.yaml", "plc.yaml"])
def test_example_configs_are_valid(name, bundle_dir, capsys):
    """Valid everywhere; where what it names exists only on the box (Picamera2 off a Pi, the CA file, the OPC UA
    users file, /var/lib/qc for a user who is not root), the one error names it (and what to install)."""
    code, out = main(["config", "check", str(DEPLOY / name), "--bundle", str(bundle_dir)]), capsys.readouterr()
    kind = load_config(DEPLOY / name).source.kind
    if code == 0:
        assert ": ok" in out.out
    else:
        assert code == 2 and len(out.err.splitlines()) == 1, out.err
        assert (f"source.kind {kind} needs" in out.err and "apt install" in out.err
                or "mqtt.ca_file /etc/qc/ca.pem: no such file" in out.err
                or "opcua.users_file /etc/qc/opcua-users: cannot be read" in out.err
                or "/var/lib/qc" in out.err and "not writable" in out.err), out.err


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
    assert {"qc-box/bundle/model.tflite", "qc-box/bundle/model.json", "qc-box/edge.yaml", "qc-box/install.sh",
            "qc-box/qc-inspect.service", "qc-box/qc_inspect-0.1.0-py3-none-any.whl", "qc-box/extras"} <= set(names)
    # a Coral's config with a bundle that has no compiled model is refused on the workstation, with the remedy
    assert main(["package", "--bundle", str(bundle_dir), "--config", str(DEPLOY / "coral.yaml"),
                 "--out", str(tmp_path / "coral.tar.gz")]) == 2
    assert not (tmp_path / "coral.tar.gz").exists() and "qc bundle compile" in capsys.readouterr().err


RECORDING = """#!/bin/sh
echo "$(basename "$0") $*" >> "$QC_TEST_LOG"
"""


def test_the_box_installs_from_its_archive_with_no_package_index(bundle_dir, tmp_path):
    """`qc package --wheels` for this machine; install.sh then needs nothing but the archive: a fresh venv,
    pip with the index switched off, the bundle and config checked by the installed `qc`, the unit enabled
    in a staged root. useradd, chown and chgrp are recording stand-ins (they would change this machine)."""
    config = tmp_path / "edge.yaml"
    config.write_text("line: l1\nstation: s1\nbundle: /opt/qc/bundle\n"
                      "source: {kind: folder, path: /var/lib/qc/frames}\ngpio: {backend: sim}\n")
    out = tmp_path / "box.tar.gz"
    assert main(["package", "--bundle", str(bundle_dir), "--config", str(config), "--box", "host", "--wheels",
                 "--out", str(out)]) == 0
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path, filter="data")
        assert any(n.startswith("qc-box/wheels/numpy-") for n in tar.getnames())
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("useradd", "chown", "chgrp"):
        (tools / name).write_text(RECORDING)
        (tools / name).chmod(0o755)
    root, log = tmp_path / "root", tmp_path / "calls.log"
    env = {"PATH": f"{tools}:/usr/bin:/bin:/usr/sbin:/sbin", "QC_ROOT": str(root), "QC_TEST_LOG": str(log),
           "PYTHON": sys._base_executable, "QC_SYSTEM_SITE_PACKAGES": "0", "PIP_CONFIG_FILE": os.devnull,
           "PIP_INDEX_URL": "http://127.0.0.1:9/nowhere", "HOME": str(tmp_path)}
    done = subprocess.run(["sh", str(tmp_path / "qc-box" / "install.sh")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    venv = root / "opt" / "qc" / "venv"
    assert (root / "opt/qc/bundle/model.tflite").read_bytes() == (bundle_dir / "model.tflite").read_bytes()
    assert (root / "etc/systemd/system/multi-user.target.wants/qc-inspect.service").is_symlink()
    calls = log.read_text().splitlines()
    assert any(c.startswith("useradd --system") and c.endswith(" qc") for c in calls)
    assert f"chown -R qc {root}/var/lib/qc" in calls
    no_tf = subprocess.run([str(venv / "bin/python"), "-c", "import tensorflow"], capture_output=True)
    assert no_tf.returncode != 0  # the box gets the edge extra only

    (tmp_path / "qc-box" / "edge.yaml").write_text("bundle: /elsewhere\n")  # tampered with on the way
    root.rename(tmp_path / "first")
    tampered = subprocess.run(["sh", str(tmp_path / "qc-box" / "install.sh")], env=env, capture_output=True, text=True)
    assert tampered.returncode != 0 and "edge.yaml: FAILED" in tampered.stdout + tampered.stderr
    assert not root.exists()  # refused before anything was installed
