"""Imports follow the layering that docs/architecture.md draws: a folder imports only folders below it."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "multiret"


def documented_layers() -> list[str]:
    """The folder order from the ``layers:`` line of docs/architecture.md (lowest first)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    match = re.search(r"^layers: (.+)$", text, re.MULTILINE)
    assert match, "docs/architecture.md has no 'layers: a → b → …' line"
    return [name.strip() for name in match.group(1).split("→")]


def documented_foundation() -> set[str]:
    """Top-level modules every folder may import (``foundation:`` line), and that import no folder."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    match = re.search(r"^foundation: (.+)$", text, re.MULTILINE)
    assert match, "docs/architecture.md has no 'foundation: …' line"
    return {name.strip() for name in match.group(1).split(",")}


def imported_units(path: Path) -> set[str]:
    """The folders (``data``) and top-level modules (``errors``) of multiret that a module imports, anywhere in it."""
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "multiret" and len(parts) > 1:
                units.add(parts[1])
    return units


def unit_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def test_every_folder_is_placed_in_the_documented_layers():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(documented_layers())


def test_imports_point_only_down_the_layers():
    layers = documented_layers()
    foundation = documented_foundation()
    against = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = unit_of(path)
        if unit in layers:
            allowed = set(layers[: layers.index(unit) + 1]) | foundation
        elif unit in foundation:
            allowed = foundation
        else:
            continue  # the command line and the test support sit above every layer
        for target in imported_units(path) - allowed:
            if target in layers or target in foundation:
                against.append(f"{path.relative_to(ROOT)} imports multiret.{target}")
    assert not against, "imports against docs/architecture.md's layers:\n" + "\n".join(against)


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from multiret.experiment.stages import build\n")
    assert imported_units(module) == {"experiment"}
