"""Imports and config wiring follow the layering that docs/architecture.md draws: a folder uses only folders below it.

The check reads the real import graph: absolute and relative imports anywhere in a module,
``importlib.import_module``/``__import__`` calls, and the ``_target_`` strings of conf/ that hand one
object to another. Every module must be placed (layer, foundation or entry point), so a new
top-level module cannot carry an upward edge between two layers. Each rule has a synthetic case
below that proves the check fails on it.
"""

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "multiret"
DOCS = ROOT / "docs" / "architecture.md"
DYNAMIC = "<dynamic>"  # an import whose module name is computed: the check cannot follow it
# conf/ keys that hand a lower layer's object a higher layer's callable, each named and documented in docs/architecture.md
CONFIG_INJECTIONS = {
    ("data", "negatives_miner", "prepare"),  # the data module is handed prepare's BM25 miner for pools with no file
    ("data", "builder", "prepare"),  # the vital data config hands the data module prepare's builder
}


def documented(name: str) -> list[str]:
    """The units of the ``<name>:`` line of docs/architecture.md, split on → or commas (lowest first)."""
    match = re.search(rf"^{name}: (.+)$", DOCS.read_text(), re.MULTILINE)
    assert match, f"docs/architecture.md has no '{name}: …' line"
    return [unit.strip() for unit in re.split(r"→|,", match.group(1))]


def imported_names(path: Path, package: Path) -> set[str]:
    """The dotted names a module imports, anywhere in it: absolute, relative (resolved), and importlib calls."""
    module_parts = list(path.relative_to(package.parent).with_suffix("").parts)
    own_package = module_parts[:-1]  # a module's package; for __init__ the folder itself
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = own_package[: len(own_package) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and _called_name(node.func) in {"import_module", "__import__"}:
            argument = node.args[0] if node.args else None
            is_text = isinstance(argument, ast.Constant) and isinstance(argument.value, str)
            names.add(argument.value if is_text else DYNAMIC)
    return names


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def unit_of(path: Path, package: Path) -> str:
    """``data`` for multiret/data/…, ``errors`` for multiret/errors.py, ``__init__`` for the package's own module."""
    relative = path.relative_to(package)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def unit_of_name(name: str, package: Path) -> str | None:
    """The unit a dotted name lands in; None outside the package; ``__init__`` for a name the package module itself holds."""
    if name == DYNAMIC:
        return DYNAMIC
    parts = name.split(".")
    if parts[0] != package.name:
        return None
    if len(parts) == 1:
        return "__init__"
    unit = parts[1]
    return unit if (package / unit).is_dir() or (package / f"{unit}.py").is_file() else "__init__"


def layer_violations(package: Path, layers: list[str], foundation: list[str], entry_points: list[str]) -> list[str]:
    """Every module that is unplaced, or that imports a unit it may not (upward, an entry point, or by a computed name)."""
    against = []
    for path in sorted(package.rglob("*.py")):
        unit, shown = unit_of(path, package), path.relative_to(package.parent)
        if unit in entry_points:
            continue  # entry points sit above every layer: they dispatch to any of them
        if unit in layers:
            allowed = set(layers[: layers.index(unit) + 1]) | set(foundation)
        elif unit in foundation:
            allowed = set(foundation)
        else:
            against.append(f"{shown} is in no layer: name {unit} in a line of docs/architecture.md")
            continue
        for name in sorted(imported_names(path, package)):
            target = unit_of_name(name, package)
            if target == DYNAMIC:
                against.append(f"{shown} imports a module by a computed name, which no check can follow")
            elif target is not None and target not in allowed:
                against.append(f"{shown} imports {name} ({target}, not below {unit})")
    return against


def config_violations(conf: Path, package: Path, layers: list[str], foundation: list[str]) -> list[str]:
    """Every ``_target_`` nested under another whose unit is lower: the config would hand a lower object a higher one."""
    against = []

    def walk(node: object, owner: str | None, key: str | None, where: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, owner, key, where)
            return
        if not isinstance(node, dict):
            return
        target = node.get("_target_")
        unit = unit_of_name(target, package) if isinstance(target, str) else None
        upward = unit in layers and owner in layers and layers.index(unit) > layers.index(owner)
        if upward and (owner, key, unit) not in CONFIG_INJECTIONS:
            against.append(f"{where}: {key} hands {owner} an object of {unit} ({target})")
        owner = unit if unit in layers else owner
        for child_key, child in node.items():
            walk(child, owner, str(child_key), where)

    for path in sorted(conf.rglob("*.yaml")):
        walk(yaml.safe_load(path.read_text()), None, None, str(path.relative_to(conf.parent)))
    return against


def test_every_folder_is_placed_in_the_documented_layers():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(documented("layers"))


def test_imports_point_only_down_the_layers():
    against = layer_violations(PACKAGE, documented("layers"), documented("foundation"), documented("entry points"))
    assert not against, "imports against docs/architecture.md's layers:\n" + "\n".join(against)


def test_config_wiring_points_only_down_the_layers():
    against = config_violations(ROOT / "conf", PACKAGE, documented("layers"), documented("foundation"))
    assert not against, "conf/ wiring against docs/architecture.md's layers:\n" + "\n".join(against)


def synthetic_package(tmp_path: Path, modules: dict[str, str]) -> Path:
    """A package ``multiret`` with the real layer folders and ``modules`` (relative path → source)."""
    package = tmp_path / "multiret"
    for folder in documented("layers"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    for relative, source in modules.items():
        (package / relative).write_text(source)
    return package


def violations_in(tmp_path: Path, modules: dict[str, str]) -> list[str]:
    package = synthetic_package(tmp_path, modules)
    return layer_violations(package, documented("layers"), documented("foundation"), documented("entry points"))


def test_the_check_sees_an_absolute_upward_import_inside_a_function(tmp_path):
    against = violations_in(tmp_path, {"data/m.py": "def f():\n    from multiret.experiment.stages import build\n"})
    assert against == ["multiret/data/m.py imports multiret.experiment.stages.build (experiment, not below data)"]


def test_the_check_sees_a_relative_upward_import(tmp_path):
    against = violations_in(tmp_path, {"data/m.py": "from ..experiment import stages\n"})
    assert against == ["multiret/data/m.py imports multiret.experiment.stages (experiment, not below data)"]
    assert violations_in(tmp_path / "ok", {"index/m.py": "from ..data import corpus\nfrom . import faiss_index\n"}) == []


def test_the_check_sees_importlib_calls(tmp_path):
    against = violations_in(tmp_path, {"model/m.py": "import importlib\nimportlib.import_module('multiret.report.compare')\n",
                                       "mtl/m.py": "from importlib import import_module\nimport_module(NAME)\n"})
    assert against == ["multiret/model/m.py imports multiret.report.compare (report, not below model)",
                       "multiret/mtl/m.py imports a module by a computed name, which no check can follow"]


def test_the_check_sees_a_new_top_level_module_used_as_a_go_between(tmp_path):
    against = violations_in(tmp_path, {"bridge.py": "from multiret.experiment import stages\n",
                                       "data/m.py": "from multiret import bridge\n"})
    assert "multiret/bridge.py is in no layer: name bridge in a line of docs/architecture.md" in against
    assert "multiret/data/m.py imports multiret.bridge (bridge, not below data)" in against


def test_the_check_sees_a_layer_reaching_an_entry_point(tmp_path):
    against = violations_in(tmp_path, {"data/m.py": "from multiret import Retriever\n"})
    assert against == ["multiret/data/m.py imports multiret.Retriever (__init__, not below data)"]


def test_the_check_sees_config_wiring_a_lower_layer_to_a_higher_one(tmp_path):
    package = synthetic_package(tmp_path, {})
    conf = tmp_path / "conf"
    (conf / "data").mkdir(parents=True)
    (conf / "data" / "bad.yaml").write_text(
        "_target_: multiret.data.datamodule.MultitaskDataModule\n"
        "negatives_miner:\n  _target_: multiret.prepare.negatives.bm25_negatives\n"  # documented injection: allowed
        "hooks:\n  - _target_: multiret.experiment.stages.build\n")
    against = config_violations(conf, package, documented("layers"), documented("foundation"))
    assert against == ["conf/data/bad.yaml: hooks hands data an object of experiment (multiret.experiment.stages.build)"]
