import subprocess
import sys

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
