"""Data sources in every kind the readers take, chat turns to build records from, and a check of the
RecordError a bad record raises."""
from __future__ import annotations

import csv
import json
import os

import pytest

from alignkit.data.errors import RecordError

FILE_KINDS = ("jsonl", "json", "json_lines", "parquet", "csv", "disk", "disk_split")
# How each kind counts positions: JSONL lines, JSON list / Parquet / datasets items, CSV data rows.
UNIT_OF = {"jsonl": "line", "json": "record", "json_lines": "line", "parquet": "record", "csv": "row",
           "disk": "record", "disk_split": "record"}


def write_records(directory, kind: str, records: list[dict], name: str = "data") -> str:
    """Write `records` as one source of `kind`; returns the path to pass to read_records.

    For "disk_split" the records go in split "train" of a DatasetDict next to a one-row "test" split.
    """
    if kind == "jsonl":
        path = os.path.join(directory, f"{name}.jsonl")
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in records)
    elif kind == "json":
        path = os.path.join(directory, f"{name}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(records, handle, indent=2)
    elif kind == "json_lines":  # JSONL content in a file named .json
        path = os.path.join(directory, f"{name}.json")
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in records)
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = os.path.join(directory, f"{name}.parquet")
        # from_pylist takes its columns from the first record only; give every row every column.
        columns = list(dict.fromkeys(key for record in records for key in record))
        pq.write_table(pa.Table.from_pylist([{key: record.get(key) for key in columns} for record in records]), path)
    elif kind == "csv":
        path = os.path.join(directory, f"{name}.csv")
        columns = list(dict.fromkeys(key for record in records for key in record))
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for record in records:
                writer.writerow({key: json.dumps(value) if isinstance(value, (list, dict)) else value
                                 for key, value in record.items()})
    elif kind in ("disk", "disk_split"):
        import datasets

        path = os.path.join(directory, name)
        dataset = datasets.Dataset.from_list(records)
        if kind == "disk_split":
            dataset = datasets.DatasetDict({"train": dataset, "test": datasets.Dataset.from_list(records[:1])})
        dataset.save_to_disk(path)
    else:
        raise ValueError(kind)
    return path


def split_for(kind: str) -> str | None:
    return "train" if kind == "disk_split" else None


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def assert_record_error(parse, record, field: str, reason: str) -> None:
    """`parse(record)` raises a RecordError naming `field`, with `reason` in what it says."""
    with pytest.raises(RecordError) as caught:
        parse(record)
    assert caught.value.field == field
    assert reason in caught.value.reason
