"""Where Hydra's configs are: inside the installed package, or conf/ at the top of a source checkout.

The configs live in the repository's top-level conf/; pyproject.toml ships that folder inside
the package as ``multiret/conf``, so a plain ``pip install`` runs from any directory. A source
checkout (and an editable install, which imports from it) has no ``multiret/conf`` and uses
conf/ beside the package.
"""

from __future__ import annotations

from pathlib import Path

ROOT_CONFIG = "train.yaml"


def config_dir() -> Path:
    """The folder holding train.yaml and the config groups."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / ROOT_CONFIG).is_file():
            return candidate
    raise FileNotFoundError(
        f"no {ROOT_CONFIG} in {package / 'conf'} (installed package) or {package.parent / 'conf'} "
        "(source checkout); reinstall multiret (pip install .) or run from a full clone"
    )


CONFIG_DIR = str(config_dir())
