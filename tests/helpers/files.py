"""Writing input files for the code under test."""
import json
from pathlib import Path


def write_jsonl(path, rows) -> str:
    """One line per row; returns the path as a string, ready for an argv list or a config.

    A row that is already a string is written as it stands, so a test can plant a line that is not
    valid JSON (or not an object) among good records.
    """
    Path(path).write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def jsonl_path(path, rows) -> Path:
    """write_jsonl, handing back a Path: for the tests that pass the file on as a Path rather than a string."""
    write_jsonl(path, rows)
    return Path(path)
