"""A passage store built once from a corpus file and reused while the file is unchanged.

The store lives in ``<store_dir>/<folder>-<file stem>-<hash of the file's path>/`` and records the
file's size and modification time (``source_key``): a later load with the same key maps the store
and never reads the file; a changed file is rebuilt over it. The key is the file's size and
mtime, not its SHA-256: hashing MS MARCO's 3 GB collection on every load would cost what the
store saves (a run's manifest still records the file's SHA-256). A build holds a lock beside the
store (``.lock``), so processes that load the same corpus at once (DDP) build it once; it writes
into ``<store>.tmp`` and renames it whole, so a killed build leaves no store that is reused (the
next build clears its ``.tmp``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from multiret.data.passage_files import PassageRow
from multiret.data.store import FORMAT, META, PassageStore
from multiret.data.store_writer import write_passage_store
from multiret.data.template import DEFAULT_PASSAGE_TEMPLATE
from multiret.errors import UserError

log = logging.getLogger(__name__)

STORE_VERSION = 1  # bump when what a corpus file's rows become changes, so that older stores are rebuilt
PROGRESS_BYTES = 1 << 28  # corpus files this large show a progress bar while their store is built


def source_key(source: Path) -> dict[str, Any]:
    """What a store built from ``source`` records, compared on every load."""
    stat = source.stat()
    return {"path": str(source.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "version": STORE_VERSION}


def store_folder(source: Path, store_dir: Path) -> Path:
    """Where the store of ``source`` is kept: one folder per corpus file, named for a person to recognise."""
    digest = hashlib.blake2b(str(source.resolve()).encode("utf-8"), digest_size=6).hexdigest()
    return store_dir / f"{source.parent.name}-{source.name.split('.')[0]}-{digest}"


def _is_current(folder: Path, key: dict[str, Any]) -> bool:
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT and meta.get("source_key") == key


@contextmanager
def _build_lock(folder: Path, source: Path) -> Iterator[None]:
    """Hold the exclusive lock of building ``folder`` (the kernel releases it when the process ends, however it ends)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        handle = folder.with_name(folder.name + ".lock").open("a")
    except OSError as error:
        raise UserError(f"cannot write the passage store of {source} into {folder.parent} ({error.strerror or error}); "
                        "choose a writable folder with data.store_dir") from error
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def cached_store(source: Path, rows: Iterable[PassageRow], store_dir: Path, page_key: str, meta: dict[str, Any],
                 template: str | None = DEFAULT_PASSAGE_TEMPLATE, unit: str = "passage") -> PassageStore:
    """The store of ``source``, built from ``rows`` (iterated only when it must be built) if none is current.

    ``page_key``, ``meta`` and ``unit`` are :func:`~multiret.data.store_writer.write_passage_store`'s.
    """
    key = source_key(source)
    folder = store_folder(source, store_dir)
    if not _is_current(folder, key):
        with _build_lock(folder, source):
            if not _is_current(folder, key):  # another process may have built it while this one waited
                log.info("building the passage store of %s in %s (once: later loads map it)", source, folder)
                write_passage_store(rows, folder, source, page_key, {**meta, "source_key": key},
                                    show_progress=key["bytes"] >= PROGRESS_BYTES, unit=unit)
    return PassageStore(folder, template)
