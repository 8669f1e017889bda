"""Checks on output paths, made before a command does any work.

A command that loads a model and generates for an hour must not then fail because `--out` names
a folder where a file goes (or the reverse): every output path is checked first, against the file
system as it is when the command starts.
"""
from __future__ import annotations

import os


class PathError(ValueError):
    """An output path that cannot be used: `--out runs/x.jsonl: is a folder; give a file name`."""


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """`path` will be written as one file: it must not be a folder, and its folder must be creatable."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        raise PathError(f"{option} {path}: is a folder; a file is needed here")
    _check_creatable(os.path.dirname(os.path.abspath(path)), path, option)


def check_output_dir(path: str | os.PathLike, option: str) -> None:
    """`path` will be a folder of outputs: it must not be a file, and must exist or be creatable."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise PathError(f"{option} {path}: is a file; a folder is needed here")
    _check_creatable(os.path.abspath(path), path, option)


def _check_creatable(folder: str, path: str, option: str) -> None:
    """`folder` exists, or its nearest existing ancestor is a folder we may write in."""
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise PathError(f"{option} {path}: {existing} is a file, so no folder can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PathError(f"{option} {path}: no permission to write in {existing}")
