"""The edge side (edge, firmware_io) imports and runs with TensorFlow made unimportable."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError(f"{name} is blocked: the edge must not need it")
    sys.meta_path.insert(0, Block())
    """
)


def run_without_tf(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_every_edge_module_imports_without_tensorflow():
    proc = run_without_tf(
        """
        import importlib, pkgutil, edge, firmware_io
        names = []
        for pkg in (edge, firmware_io):
            for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                importlib.import_module(mod.name)
                names.append(mod.name)
        assert "tensorflow" not in sys.modules
        try:
            import tensorflow
        except ImportError:
            pass
        else:
            raise SystemExit("the block did not work")
        print(len(names), "modules")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[0]) >= 2


def test_qc_says_to_install_train_extra_when_tensorflow_is_missing(tmp_path):
    proc = run_without_tf(
        """
        from qc.cli import main
        raise SystemExit(main(sys.argv[1:]))
        """,
        "train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
    )
    assert proc.returncode == 2
    assert "pip install 'qc-inspect[train]'" in proc.stderr
