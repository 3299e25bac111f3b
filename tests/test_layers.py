"""The layers run one way, firmware_io <- edge <- training, and the box never needs TensorFlow.

Read from the source (every import statement, also those inside functions), so a lazy import that
climbs a layer is caught as well as one at the top of a module.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TENSORFLOW = {"tensorflow", "keras", "tf_keras", "tensorflow_model_optimization"}
# what each package may not import, by top-level name
FORBIDDEN = {
    "firmware_io": {"edge", "training", "qc", "bench"} | TENSORFLOW,
    "edge": {"training", "qc"} | TENSORFLOW,
    "training": {"qc"},
}


def imported_roots(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_layer_imports_a_layer_above_it(package):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in sorted((ROOT / package).rglob("*.py"))
             for name, line in sorted(imported_roots(path)) if name in FORBIDDEN[package]]
    assert not wrong, "\n".join(wrong)


def test_the_contract_catches_a_climbing_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def later():\n    from edge.bundle import load_bundle\n    import tensorflow as tf\n")
    assert {name for name, _ in imported_roots(module)} == {"edge", "tensorflow"}


def test_each_layer_has_its_own_error_type():
    from edge.errors import EdgeError
    from firmware_io.errors import FirmwareIOError, QCError
    from training.errors import TrainingError

    for error in (EdgeError, FirmwareIOError, TrainingError):
        assert issubclass(error, QCError) and error is not QCError
    assert len({EdgeError, FirmwareIOError, TrainingError}) == 3


def _module_graph() -> dict[str, set[str]]:
    """Module-level imports between the project's own modules (lazy imports inside functions excluded)."""
    names = {}
    for package in ("firmware_io", "edge", "training", "qc", "bench"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in names.items():
        targets = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module
                            for a in node.names}
        graph[name] = {t for t in targets if t in names and t != name}
    return graph


def test_no_module_imports_itself_back_in_a_circle():
    graph, state, cycles = _module_graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert len(graph) > 50 and not cycles, "\n".join(cycles)
