"""Which FAISS build is installed: exactly one of the pip extras `cpu` (faiss-cpu) or `gpu` (faiss-gpu).

Every FAISS wheel installs the same module, ``faiss``; with two of them the files of the one
installed last overwrite the other's and uninstalling either leaves a broken mix. So multiret
refuses to start with two builds and says how to keep one.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType
from typing import Any

#: The pip distributions that provide the module ``faiss`` (FAISS's own wheels and the older community CUDA ones).
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11")
INSTALL_HINT = 'pip install "multiret[cpu]" (FAISS for the CPU) or pip install "multiret[gpu]" (FAISS with CUDA)'


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Name → version of each of these pip distributions that is installed (the others are left out)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def installed_faiss_distributions() -> dict[str, str]:
    """Name → version of every installed FAISS distribution."""
    return installed_versions(FAISS_DISTRIBUTIONS)


def check_single_build(installed: dict[str, str]) -> None:
    """Fail with the fix when more than one FAISS distribution is installed."""
    if len(installed) > 1:
        names = sorted(installed)
        listed = ", ".join(f"{n}=={installed[n]}" for n in names)
        raise ImportError(
            f"several FAISS builds are installed ({listed}); they overwrite each other's module `faiss`. "
            f"Keep one: pip uninstall -y {' '.join(names)}, then {INSTALL_HINT}"
        )


def import_faiss() -> ModuleType:
    """The module ``faiss``, after checking that exactly one build provides it."""
    check_single_build(installed_faiss_distributions())
    try:
        return importlib.import_module("faiss")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"FAISS is not installed; {INSTALL_HINT}", name="faiss") from err


def faiss_build() -> dict[str, Any]:
    """What the run manifest records: the distribution and version that ran, and whether it has GPU support."""
    faiss = import_faiss()
    installed = installed_faiss_distributions()
    return {
        "distribution": next(iter(installed), None),  # None: faiss came from elsewhere (conda, a source build)
        "version": getattr(faiss, "__version__", None),
        "gpu_support": hasattr(faiss, "StandardGpuResources"),
    }
