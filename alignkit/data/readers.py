"""Read raw records (dicts) from local files, `save_to_disk` folders or the Hugging Face hub.

Every record keeps where it came from, so later errors can say `train.jsonl:17: ...`.
Positions are 1-based: physical lines for JSONL, item numbers for JSON lists, Parquet and
datasets tables ("record N"), data rows for CSV with the header not counted ("row N").
CSV cells are text, except that an empty cell reads as null and a cell holding a JSON list of
messages reads as that list (see `_csv_cell`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from alignkit.data.errors import DataError, NothingToKeep, RecordError, SkipReport, describe_type

T = TypeVar("T")
OnError = Callable[[RecordError], None]

# "name" or "owner/name" with no extension we read: what the hub calls a dataset id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class Record:
    data: dict
    path: str
    line: int
    unit: str = "line"  # "line" | "record" | "row", see errors.UNITS

    def error(self, field: str, reason: str) -> RecordError:
        return RecordError(field, reason, path=self.path, line=self.line, unit=self.unit)


@dataclass
class DataSpec:
    """One data source in a config: where it is, how to parse it and its share of a mix."""

    path: str
    format: str = "auto"
    split: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise DataError(f"data spec: path must be a non-empty string, got {self.path!r}")
        self.path = os.fspath(self.path)
        if not isinstance(self.format, str):
            raise DataError(f"data spec {self.path}: format must be a string, got {self.format!r}")
        if self.split is not None and not isinstance(self.split, str):
            raise DataError(f"data spec {self.path}: split must be a string, got {self.split!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not math.isfinite(self.weight) or self.weight < 0:
            raise DataError(f"data spec {self.path}: weight must be a finite number >= 0, got {self.weight!r}")

    @classmethod
    def from_config(cls, item: Any, where: str = "data") -> DataSpec:
        """A YAML/JSON entry: either a plain path string or a mapping with the dataclass fields."""
        if isinstance(item, (str, os.PathLike)):
            return cls(os.fspath(item))
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a path or a mapping with 'path', got {type(item).__name__}")
        allowed = {"path", "format", "split", "weight"}
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise DataError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")
        if "path" not in item:
            raise DataError(f"{where}: missing 'path'")
        return cls(**item)


def located_records(path: str | os.PathLike) -> Iterator[tuple[dict, dict]]:
    """(location, object) per record of one file; `location` holds the keyword arguments of a RecordError there.

    For loaders that check their own fields and name the file and line of a bad one.
    """
    for record in read_records(path):
        yield {"path": record.path, "line": record.line, "unit": record.unit}, record.data


def as_specs(sources: Any, *, fmt: str = "auto", split: str | None = None) -> list[DataSpec]:
    """Normalise one path / DataSpec / config mapping, or a list of them, to DataSpecs.

    `fmt` and `split` apply to plain paths only; a DataSpec carries its own.
    """
    items = [sources] if isinstance(sources, (str, os.PathLike, DataSpec, dict)) else list(sources)
    if not items:
        raise DataError("no data sources given")
    specs = []
    for index, item in enumerate(items):
        if isinstance(item, DataSpec):
            specs.append(item)
        elif isinstance(item, (str, os.PathLike)):
            specs.append(DataSpec(os.fspath(item), format=fmt, split=split))
        else:
            specs.append(DataSpec.from_config(item, where=f"data[{index}]"))
    return specs


def read_records(path: str | os.PathLike, *, split: str | None = None,
                 on_error: OnError | None = None) -> Iterator[Record]:
    """Yield every record of one source.

    A bad record raises `RecordError`, or goes to `on_error` (and reading continues) when given.
    A source with no records at all raises `DataError`.
    """
    path = os.fspath(path)
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        yield from _read_dataset(_load_from_disk(local, path), path, split)
        return
    if not os.path.exists(local):
        if _looks_like_hub_id(path):
            # load_dataset has already picked the split when one was named.
            yield from _read_dataset(_load_from_hub(path, split), path, None)
            return
        raise DataError(f"{path}: file not found")
    ext = os.path.splitext(local)[1].lower()
    if split is not None:
        raise DataError(f"{path}: split={split!r} only applies to datasets folders and hub ids, not {ext} files")
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    if ext not in readers:
        raise DataError(f"{path}: unknown extension {ext or '(none)'}; expected one of {', '.join(_EXTENSIONS)}")
    errors = 0

    def count_error(error: RecordError) -> None:
        nonlocal errors
        errors += 1
        (on_error or _raise)(error)

    count = 0
    try:
        for record in readers[ext](local, path, count_error):
            count += 1
            yield record
    except OSError as error:  # EIO, permission denied: the file, not the program, is at fault
        raise unreadable(path, error) from None
    if count == 0 and errors == 0:
        raise DataError(f"{path}: contains no records")


def load_parsed(sources: Any, parse: Callable[[Record, DataSpec], Iterable[T]], *, skip_bad: bool,
                fmt: str = "auto", split: str | None = None) -> tuple[list[T], SkipReport]:
    """Read every source and turn each record into zero or more items with `parse`.

    `parse` raises `RecordError` (unplaced is fine) for a bad record. With `skip_bad=False` the
    first one propagates, placed at its file and line; with True it is counted in the report.
    A source whose every record was skipped raises `DataError`: an empty result is never success.
    """
    report = SkipReport()
    items: list[T] = []
    for spec in as_specs(sources, fmt=fmt, split=split):
        source_report = SkipReport()
        for record in read_records(spec.path, split=spec.split, on_error=source_report.add if skip_bad else None):
            try:
                produced = list(parse(record, spec))
            except NothingToKeep as nothing:
                source_report.add(nothing.located(record.path, record.line, record.unit))
                continue
            except RecordError as error:
                placed = error.located(record.path, record.line, record.unit)
                if not skip_bad:
                    raise placed from None
                source_report.add(placed)
                continue
            items.extend(produced)
            source_report.add_kept()
        if source_report.kept == 0:
            raise DataError(f"{spec.path}: all {source_report.skipped} records were skipped\n"
                            + source_report.summary())
        report.merge(source_report)
    return items, report


def _raise(error: RecordError) -> None:
    raise error


def read_text(path: str | os.PathLike) -> str:
    """The whole of a text input file, UTF-8 with an optional BOM.

    The one way to read such a file: a missing file, a folder, an I/O error or bytes that are not
    UTF-8 all raise a `DataError` naming the file (and line and byte of a bad byte).
    """
    path = os.fspath(path)
    try:
        with open(os.path.expanduser(path), "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise unreadable(path, error) from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 text ({error.reason} at byte {error.start}); "
                        "is it a binary file?") from None


def unreadable(path: str, error: OSError) -> DataError:
    """A one-line `DataError` for an input file the system would not read, saying why."""
    if isinstance(error, FileNotFoundError):
        return DataError(f"{path}: file not found")
    if isinstance(error, IsADirectoryError):
        return DataError(f"{path}: is a folder; a file is needed here")
    return DataError(f"{path}: cannot read: {error.strerror or error}")


def _looks_like_hub_id(path: str) -> bool:
    return bool(_HUB_ID.match(path)) and not path.lower().endswith(_EXTENSIONS)


def _read_jsonl(local: str, path: str, on_error: OnError) -> Iterator[Record]:
    # Read bytes and decode per line so a bad byte is reported at its line, not as a crash.
    with open(local, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                on_error(RecordError("", f"not valid UTF-8 ({exc.reason} at byte {exc.start})",
                                     path=path, line=line_number))
                continue
            if not text.strip():
                continue
            record = _parse_json_line(text, path, line_number, on_error)
            if record is not None:
                yield record


def _parse_json_line(text: str, path: str, line_number: int, on_error: OnError) -> Record | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        on_error(RecordError("", f"invalid JSON: {exc.msg} at column {exc.colno}", path=path, line=line_number))
        return None
    if not isinstance(data, dict):
        on_error(RecordError("", f"expected a JSON object, got {describe_type(data)}", path=path, line=line_number))
        return None
    return Record(data, path, line_number, "line")


def _read_json(local: str, path: str, on_error: OnError) -> Iterator[Record]:
    """A JSON list of objects, one pretty-printed object, or JSONL content named .json."""
    text = read_text(path)
    if not text.strip():
        return
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} at column {exc.colno}") from None
        # Several objects, one a line: JSONL in a .json file. Errors then name the line.
        yield from _read_jsonl(local, path, on_error)
        return
    if isinstance(document, dict):
        yield Record(document, path, 1, "line")
        return
    if not isinstance(document, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {describe_type(document)}")
    for index, item in enumerate(document, start=1):
        if not isinstance(item, dict):
            on_error(RecordError("", f"expected a JSON object, got {describe_type(item)}",
                                 path=path, line=index, unit="record"))
            continue
        yield Record(item, path, index, "record")


def _read_parquet(local: str, path: str, on_error: OnError) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table_file = pq.ParquetFile(local)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    index = 0
    for batch in table_file.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            index += 1
            yield Record(row, path, index, "record")


def _read_csv(local: str, path: str, on_error: OnError) -> Iterator[Record]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts exceed the 128 KiB default
    # Decoded whole by read_text, so a bad byte is reported at its line rather than mid-stream.
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    if reader.fieldnames is None:
        return
    width = len(reader.fieldnames)
    for row_number, row in enumerate(reader, start=1):
        extra = row.pop(None, None)  # type: ignore[call-overload]
        if extra is not None:
            on_error(RecordError("", f"row has {width + len(extra)} cells but the header has {width}",
                                 path=path, line=row_number, unit="row"))
            continue
        missing = [name for name, value in row.items() if value is None]
        if missing:
            on_error(RecordError("", f"row has fewer cells than the header; no value for {missing}",
                                 path=path, line=row_number, unit="row"))
            continue
        yield Record({name: _csv_cell(value) for name, value in row.items()}, path, row_number, "row")


def _csv_cell(text: str) -> Any:
    """An empty cell is null (CSV cannot tell it from a missing value); a cell holding a JSON
    list of messages (objects with "role" or "from") is that list, so a conversational prompt
    or completion is not mistaken for text. Every other cell stays text."""
    if text == "":
        return None
    if text.lstrip().startswith("[{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(value, list) and all(isinstance(item, dict) and ("role" in item or "from" in item)
                                           for item in value):
            return value
    return text


def _load_from_disk(local: str, path: str) -> Any:
    import datasets

    try:
        return datasets.load_from_disk(local)
    except FileNotFoundError:
        raise DataError(f"{path}: a folder, but not one written by datasets' save_to_disk") from None
    except Exception as exc:  # datasets fails in odd ways on some folders (an empty dataset: IndexError)
        raise DataError(f"{path}: datasets could not load this folder ({type(exc).__name__}: {exc}); "
                        "an empty dataset reads this way too") from exc


def _load_from_hub(dataset_id: str, split: str | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # network, auth, missing split: all mean "cannot read this source"
        raise DataError(f"{dataset_id}: no such local file, and loading it as a hub dataset failed: {exc}") from exc


def _read_dataset(dataset: Any, path: str, split: str | None) -> Iterator[Record]:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        names = list(dataset.keys())
        if split is None:
            if len(names) != 1:
                raise DataError(f"{path}: holds splits {names}; say which with split=")
            split = names[0]
        if split not in dataset:
            raise DataError(f"{path}: no split {split!r}; it has {names}")
        dataset = dataset[split]
    elif not isinstance(dataset, datasets.Dataset):
        raise DataError(f"{path}: expected a Dataset or DatasetDict, got {type(dataset).__name__}")
    elif split is not None:
        raise DataError(f"{path}: split={split!r} given, but the folder holds one Dataset without splits")
    if len(dataset) == 0:
        raise DataError(f"{path}: contains no records")
    for index, row in enumerate(dataset, start=1):
        yield Record(dict(row), path, index, "record")

