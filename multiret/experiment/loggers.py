"""Loggers and callbacks from config dicts; W&B that is offline unless the user is logged in."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_named(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` group; entries without a target are skipped."""
    objects = []
    for name, node in (group or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            log.info("instantiating %s <%s>", name, node._target_)
            objects.append(instantiate(node))
    return objects


def wandb_logged_in() -> bool:
    """True when W&B credentials exist (an API key in the environment or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_logger(offline: bool | str = "auto", **kwargs: Any) -> WandbLogger:
    """A WandbLogger; ``offline="auto"`` logs online only when the user is logged in (sync later with ``wandb sync``)."""
    os.environ.setdefault("WANDB_SILENT", "true")  # the run folder is reported by multiret itself
    if offline == "auto":
        offline = not wandb_logged_in()
    Path(kwargs.get("save_dir", ".")).mkdir(parents=True, exist_ok=True)
    return WandbLogger(offline=bool(offline), **kwargs)
