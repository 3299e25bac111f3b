import subprocess
import sys
from pathlib import Path

import pytest

from qc.cli import main
from qc.commands import SPECS


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for spec in SPECS:
        assert spec.name in out


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_each_command_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: qc " + name in capsys.readouterr().out


def test_console_script_runs_synth_and_data(tmp_path):
    out = tmp_path / "d"
    proc = subprocess.run([sys.executable, "-m", "qc", "synth", str(out), "--count", "40", "--size", "32"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "qc", "data", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0 and "good:defect = 20:20" in proc.stdout


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def _help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare with spaces folded


@pytest.mark.parametrize("command, model", [("train", "TrainConfig"), ("synth", "SynthConfig"),
                                            ("export", "ExportConfig")])
def test_help_shows_each_default_of_its_settings_model(command, model, capsys):
    import training.config

    cls = getattr(training.config, model)
    text = _help_text(capsys, command)
    for name, field in cls.model_fields.items():
        if name in ("augment", "mode"):
            continue  # augment has its own flags; mode is --int8/--float16/--float32
        flag = "--" + name.replace("_", "-")
        assert flag in text or f" {name} " in text, f"{command} has no flag for {model}.{name}"
        if field.default is not None and field.default_factory is None and not field.is_required():
            shown = str(field.default).lower() if isinstance(field.default, bool) else str(field.default)
            assert f"(default {shown})" in text, f"{flag}: help does not show the default {shown}"


def test_generated_flags_reach_the_settings(tmp_path, monkeypatch):
    import argparse

    from qc.flags import add_model_flags, given
    from training.config import TrainConfig

    p = argparse.ArgumentParser()
    add_model_flags(p, TrainConfig, skip=("augment",))
    a = p.parse_args(["--data", "d", "--out", "o", "--no-class-weights", "--epochs", "3", "--arch", "mobilenet_v2"])
    assert given(a, TrainConfig) == {"data": Path("d"), "out": Path("o"), "class_weights": False, "epochs": 3,
                                     "arch": "mobilenet_v2"}
    with pytest.raises(SystemExit):
        p.parse_args(["--arch", "resnet"])


def test_settings_files_name_a_misspelt_key(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("data: d\nout: o\nepoch: 3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "epoch: Extra inputs are not permitted" in capsys.readouterr().err
