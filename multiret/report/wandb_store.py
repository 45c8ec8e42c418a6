"""Read a W&B run's config and summary from its local ``.wandb`` file (offline runs included).

An offline run folder (``wandb/offline-run-*/``) written by wandb 0.31 holds neither
``files/config.yaml`` nor ``files/wandb-summary.json``: everything is in ``run-<id>.wandb``, and
the installed wandb no longer ships a Python reader for it. The file is a LevelDB-style log
(a 7-byte header ``:W&B``, magic 0xBEE1, version 0; then 32 KiB blocks of chunks, each with a
CRC-32 of its type and payload, a length and a type: full, first, middle or last) whose records
are ``wandb_internal_pb2.Record`` protobufs. Config and summary are the ordered updates of the
run, config and summary records; a finished run's file ends with an exit record.

wandb 0.31's ``run.finish()`` can return before the offline file is fully written (the
``wandb-core`` service flushes it later); ``wandb.teardown()`` waits for it. A file without an
exit record is therefore a run still being written, or one that crashed.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32768
CHUNK_HEADER = struct.Struct("<IHB")  # CRC-32 of type + payload, payload length, chunk type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass(frozen=True)
class LoggedRun:
    """What a W&B run logged: its config and final summary (nested dicts), group, job type, and whether it exited."""

    config: dict[str, Any]
    summary: dict[str, Any]
    group: str
    job_type: str
    exited: bool


def records(path: Path) -> Iterator[bytes]:
    """Every record's bytes in order; a record cut off at the end (a run still writing) ends the scan."""
    data = path.read_bytes()
    if not data.startswith(FILE_HEADER):
        raise ValueError(f"{path}: not a W&B run file (expected header {FILE_HEADER!r}, got {data[:7]!r}); wandb changed its format?")
    pos, pending = len(FILE_HEADER), b""
    while pos + CHUNK_HEADER.size <= len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK_HEADER.size:  # a block's tail too short for a chunk header is zero padding
            pos += room
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        start = pos + CHUNK_HEADER.size
        payload = data[start:start + length]
        if len(payload) < length:
            return
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc or kind not in (FULL, FIRST, MIDDLE, LAST):
            raise ValueError(f"{path}: corrupt record at byte {pos} (checksum or chunk type {kind}); the file is damaged")
        pos = start + length
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            yield pending
            pending = b""


def apply_updates(target: dict[str, Any], items: Any) -> None:
    """Apply W&B config/summary items (``key`` or a ``nested_key`` path, JSON value) in order."""
    for item in items:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = target
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = json.loads(item.value_json)


def remove_items(target: dict[str, Any], items: Any) -> None:
    for item in items:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = target
        for name in parents:
            node = node.get(name, {})
        node.pop(leaf, None)


def read_run(path: Path) -> LoggedRun:
    """The config, summary, group and job type a ``.wandb`` file holds, and whether it has the exit record."""
    # wandb is a dependency; imported here to keep the CLI fast
    from wandb.proto import wandb_internal_pb2

    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    group = job_type = ""
    exited = False
    for raw in records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            group, job_type = record.run.run_group, record.run.job_type
            apply_updates(config, record.run.config.update)
        elif kind == "config":
            apply_updates(config, record.config.update)
            remove_items(config, record.config.remove)
        elif kind == "summary":
            apply_updates(summary, record.summary.update)
            remove_items(summary, record.summary.remove)
        elif kind == "exit":
            exited = True
    return LoggedRun(config, summary, group, job_type, exited)


def run_folders(root: Path) -> list[Path]:
    """W&B run folders (``offline-run-*`` or ``run-*`` with a ``.wandb`` file) under ``root``, not ``latest-run`` links."""
    folders = {
        p.parent for p in root.rglob("run-*.wandb")
        if p.parent.name.startswith(("offline-run-", "run-")) and not p.parent.is_symlink()
    }
    return sorted(folders)


def run_file(folder: Path) -> Path:
    """The one ``.wandb`` file of a W&B run folder."""
    files = sorted(folder.glob("run-*.wandb"))
    if len(files) != 1:
        raise ValueError(f"{folder}: expected one run-*.wandb file, found {len(files)}")
    return files[0]
