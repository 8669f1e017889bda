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


def read_jsonl(path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def output_bytes(folder, outputs):
    """The bytes of each output file of a data job's folder, and its summary.json less the folder it names:
    what must be equal between a resumed and an uninterrupted run."""
    import os

    files = {name: open(os.path.join(folder, name), "rb").read() for name in outputs}
    summary = json.loads(open(os.path.join(folder, "summary.json"), encoding="utf-8").read())
    assert summary.pop("output_dir") == str(folder)
    return files, summary
