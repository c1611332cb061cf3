"""The size limits of issue 24: no file in vsmd/ over 400 lines, no class over 300, and no code outside the AGM
family that asks which family it has (``bridge`` flags, the process name "agm")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vsmd"
FILES = sorted(PACKAGE.rglob("*.py"))


def test_no_file_over_400_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in FILES if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_no_class_over_300_lines() -> None:
    long = {}
    for p in FILES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300:
                long[f"{p.relative_to(PACKAGE)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long, long


def test_no_family_flags_outside_the_families() -> None:
    """Only the registry, the AGM family's own files and the config checks name AGM by its process name; nothing
    reads a ``bridge`` attribute."""
    allowed = {"diffusion/agm.py", "diffusion/process.py", "models/options.py", "legacy.py"}
    found = []
    for p in FILES:
        rel = str(p.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "bridge":
                found.append(f"{rel}:{node.lineno} .bridge")
            if isinstance(node, ast.Constant) and node.value == "agm" and rel not in allowed:
                found.append(f"{rel}:{node.lineno} 'agm'")
    assert not found, found
