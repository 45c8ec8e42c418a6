"""Run folders that two runs never share, even when started in the same second or by one SLURM array."""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from multiret.errors import UserError, UserErrorExit

RESOLVER = "unique_run_dir"
ATTEMPTS = 100  # names tried before giving up; each has a fresh time and random part


def unique_run_dir(parent: str) -> str:
    """Create a new folder under ``parent`` and return its path.

    The name is the start time to the microsecond, the SLURM job (``<array job>_<task>`` or
    ``<job>``) when there is one, and four random hex digits, e.g.
    ``2026-12-01_22-13-23.123456_4242_7-a3f9``. The folder is made with ``os.mkdir``, which
    fails if another process made it first; a taken name is retried with a new one.
    """
    base = Path(parent)
    try:
        base.mkdir(parents=True, exist_ok=True)
        for _ in range(ATTEMPTS):
            folder = base / f"{datetime.now():%Y-%m-%d_%H-%M-%S.%f}_{_job_part()}{secrets.token_hex(2)}"
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            return str(folder)
    except OSError as error:  # a SystemExit: OmegaConf and Hydra would wrap an Exception in their own traceback
        raise UserErrorExit(UserError(
            f"cannot create a run folder under {parent!r} ({error.strerror or error}); set MULTIRET_LOGS "
            "(or paths.log_dir) to a writable folder")) from error
    raise FileExistsError(f"{base}: {ATTEMPTS} new run folder names were all taken; is something creating folders there?")


def _job_part() -> str:
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}-"
    job = os.environ.get("SLURM_JOB_ID")
    return f"{job}-" if job else ""


def register_resolver() -> None:
    """Make ``${unique_run_dir:<parent>}`` available to the Hydra apps' configs (conf/hydra/default.yaml).

    The value is cached in the config, as Hydra's ``${now:...}`` is, and Hydra copies that cache
    into every job of a multirun, so the folder is made once and every job sees the same one.
    """
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, unique_run_dir, use_cache=True)
