"""Imports flow downward only (../shared/DESIGN.md): every `import lengthwise...` in src/, at
module level or inside a function, points at a lower floor of the house, or stays inside its own
package; and no import, however lazy, closes a cycle."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lengthwise"

# Top floor first: DESIGN.md's order, with the run folder contract (rundir) beside data and
# model, and io (atomic writes) just above errors.
FLOORS = [
    {"__main__"},
    {"cli", "config_reference"},
    {"experiments"},
    {"demo", "export"},
    {"integrations"},  # above train: its HF Trainer callback runs train's EvalRound
    {"train", "report"},
    {"eval"},
    {"data", "model", "rundir"},
    {"config"},
    {"tasks", "batch"},
    {"io"},
    {"errors"},
    {""},  # the package root (__version__)
]


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted(SRC.rglob("*.py")):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported lengthwise module, line) for every import in the file, lazy ones included;
    `from pkg import sub` counts as importing the submodule."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "lengthwise":
                continue
            subs = [f"{node.module}.{a.name}" for a in node.names]
            found += [(t, node.lineno) for t in [s for s in subs if s in mods] or [node.module]]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("lengthwise")]
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _floor(module: str) -> int:
    room = _room(module)
    for i, rooms in enumerate(FLOORS):
        if room in rooms:
            return i
    raise AssertionError(f"{module}: not on any floor of FLOORS; place it there")


def test_every_import_points_down():
    mods = _modules()
    wrong = []
    for module, path in mods.items():
        for target, line in _imports(path, mods):
            same_room = _room(module) == _room(target) and _room(module) != ""
            if not same_room and _floor(target) <= _floor(module):
                wrong.append(f"{path.relative_to(SRC.parent)}:{line}: {module} -> {target}")
    assert not wrong, "imports against the floor order:\n" + "\n".join(wrong)


def test_no_import_closes_a_cycle():
    mods = _modules()
    graph = {m: {t for t, _ in _imports(p, mods) if t in mods and t != m} for m, p in mods.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join([*path, m, t])
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The rule itself: an upward import (data -> train) and a lazy one are both found."""
    f = tmp_path / "m.py"
    f.write_text("import os\ndef f():\n    from lengthwise.train import trainer\n")
    mods = {"lengthwise.train.trainer": Path()}
    assert _imports(f, mods) == [("lengthwise.train.trainer", 3)]
    assert _floor("lengthwise.train.trainer") < _floor("lengthwise.data.store")
