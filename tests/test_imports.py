"""The package's import graph has no cycle (imports inside functions included), and every module of the math layer
imports on its own, in any order."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vsmd"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The vsmd modules ``name`` imports anywhere in its source (top level, functions, TYPE_CHECKING blocks)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # ``from pkg import mod`` imports the submodule pkg.mod; ``from mod import name`` imports mod.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # a name inside a module: the module itself
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None. Importing a submodule runs its
    package's __init__ first, but that is not an edge here: a package that imports its own submodules is fine."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graph_walker_sees_lazy_imports_and_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) in (["a", "b", "c", "a"], ["b", "c", "a", "b"], ["c", "a", "b", "c"])
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    mods = modules()
    assert "vsmd.diffusion.process" in mods and "vsmd.diffusion" in mods
    graph = import_graph()
    assert "vsmd.diffusion.kernel" in graph["vsmd.diffusion.forward"]  # "from vsmd.diffusion import kernel"
    assert "vsmd.diffusion.process" in graph["vsmd.diffusion"]  # the package's own __init__ counts


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_math_layer_imports_nothing_lazily():
    """Every vsmd import of the math layer's modules is at module level (no import hidden in a function)."""
    lazy = []
    for name, path in modules().items():
        if not name.startswith("vsmd.diffusion"):
            continue
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                lazy += [f"{name}: {n}" for n in names if n.startswith("vsmd")]
    assert not lazy, f"lazy imports: {lazy}"


DIFFUSION = sorted(n for n in modules() if n.startswith("vsmd.diffusion."))


@pytest.mark.parametrize("order", ["forward", "reverse", "each_alone"])
def test_each_math_module_imports_in_any_order(order):
    """``import vsmd.diffusion.<m>`` works first thing in a fresh interpreter, and after the others in either order."""
    if order == "each_alone":
        scripts = [f"import {m}" for m in DIFFUSION]
    else:
        mods = DIFFUSION if order == "forward" else DIFFUSION[::-1]
        scripts = ["; ".join(f"import {m}" for m in mods)]
    for script in scripts:
        run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, f"{script}\n{run.stderr}"
