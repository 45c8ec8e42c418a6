"""pyproject.toml lists every package of the source tree (the list is explicit, so that conf/ can ship as multiret.conf)."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]


def test_every_package_of_the_tree_is_listed_and_conf_ships_as_multiret_conf():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "multiret").rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk | {"multiret.conf"}
    assert setuptools["package-dir"] == {"multiret.conf": "conf"}
