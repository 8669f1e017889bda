"""Writing files and folders so that a crash, a kill or a full disk never leaves one that looks complete.

Everything is written under a temporary name beside its target (the same folder, so the rename never
crosses file systems), flushed to disk, renamed over the target, and the rename itself is flushed by
syncing the folder. Until the rename the old file or folder stays whole. A temporary name starts with
TMP_PREFIX, so what a kill leaves behind is found (and removed) at the next start.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

TMP_PREFIX = ".tmp-"


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> Path:
    # One name per writer: two processes filling the same cache entry or model folder never share a temporary.
    return path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_tree(folder: Path) -> None:
    """Every file, then every folder from the deepest up: the data before the names that point at it."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write, by any means (open, safetensors, ...).
    When the block ends without an error the file reaches the disk and replaces `path`; on an error it
    is removed and `path` is as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        _remove(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder beside `path` for the block to fill. When the block ends without an error,
    every file in it reaches the disk and it replaces `path`; on an error it is removed and `path` is as
    it was. A folder cannot be renamed over one that has files, so an old `path` is first renamed aside:
    a crash between the two renames leaves no `path` rather than a mix of old and new files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    tmp.mkdir()
    old = None
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists() or path.is_symlink():
            old = _temp_beside(path)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        _remove(tmp)
        if old is not None:
            _remove(old)


def remove_leftovers(folder: str | os.PathLike) -> None:
    """Delete the temporaries of writes into `folder` that a kill interrupted (one may be a whole model)."""
    folder = Path(folder)
    if folder.is_dir():
        for leftover in folder.glob(TMP_PREFIX + "*"):
            _remove(leftover)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any, *, allow_nan: bool = False) -> None:
    """Indented JSON. `allow_nan`: write NaN and Infinity (not JSON, but Python reads them back) rather
    than raise; for numbers such as a training loss, where a NaN is the result to report."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=allow_nan) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """One JSON value a line; `rows` may be a generator, written as it yields."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
