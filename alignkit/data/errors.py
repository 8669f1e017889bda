"""Errors for bad data, and the report of records skipped on purpose.

A `RecordError` points at one record (file, line or record number, field) so a user can open
the file and fix it. A `DataError` is about a whole source (missing, empty, unreadable). When a
loader is told to skip bad records, every skipped one lands in a `SkipReport`, so nothing
disappears without a trace.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# How a record's position is counted: a physical line (JSONL), an item of a JSON list / Parquet
# table / datasets table ("record"), or a CSV data row with the header not counted ("row").
UNITS = ("line", "record", "row")


class DataError(ValueError):
    """A problem with a whole source: missing, empty, unreadable (I/O error, no permission), not
    UTF-8 text, a folder where a file is needed, an unknown extension."""


class RecordError(ValueError):
    """One bad record: `path:17: messages[2].role: missing`.

    `path` and `line` may be unknown when the error is raised by code that sees only the record
    (format parsers); loaders fill them in with `located()`.
    """

    def __init__(self, field: str, reason: str, *, path: str | None = None, line: int | None = None,
                 unit: str = "line") -> None:
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        self.field = field
        self.reason = reason
        self.path = path
        self.line = line
        self.unit = unit
        super().__init__(str(self))

    def located(self, path: str, line: int, unit: str = "line") -> RecordError:
        """The same error, placed in a file."""
        return type(self)(self.field, self.reason, path=path, line=line, unit=unit)

    @property
    def where(self) -> str:
        if self.path is None:
            return ""
        if self.line is None:
            return self.path
        if self.unit == "line":
            return f"{self.path}:{self.line}"
        return f"{self.path}:{self.unit} {self.line}"

    def __str__(self) -> str:
        parts = [p for p in (self.where, self.field) if p]
        return ": ".join(parts + [self.reason])

    def __reduce__(self):  # keeps the error picklable (DataLoader workers, multiprocessing)
        return (_rebuild_record_error, (type(self), self.field, self.reason, self.path, self.line, self.unit))

    def to_dict(self) -> dict:
        return {"path": self.path, "line": self.line, "unit": self.unit, "field": self.field,
                "reason": self.reason}


class NothingToKeep(RecordError):
    """A valid record that yields no items (a ranking whose scores all tie under the pair rule).

    Loaders always count it as skipped, and never raise it, even when not skipping bad records.
    """


def describe_type(value: Any) -> str:
    """JSON-flavoured type name for error messages: 'a list', 'a string', 'null'."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _rebuild_record_error(cls: type[RecordError], field: str, reason: str, path: str | None,
                          line: int | None, unit: str) -> RecordError:
    return cls(field, reason, path=path, line=line, unit=unit)


@dataclass
class SkipReport:
    """Counts of kept and skipped records; the first `max_listed` skipped ones are kept whole."""

    max_listed: int = 50
    kept: int = 0
    skipped: int = 0
    listed: list[RecordError] = field(default_factory=list)
    # Reason counts are keyed by field + reason without the position, so "messages[0].role:
    # missing" in a thousand records reads as one line with a count.
    reasons: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.kept + self.skipped

    def add(self, error: RecordError) -> None:
        self.skipped += 1
        self.reasons[_reason_key(error)] += 1
        if len(self.listed) < self.max_listed:
            self.listed.append(error)

    def add_kept(self, count: int = 1) -> None:
        self.kept += count

    def merge(self, other: SkipReport) -> None:
        self.kept += other.kept
        self.skipped += other.skipped
        self.reasons.update(other.reasons)
        room = max(0, self.max_listed - len(self.listed))
        self.listed.extend(other.listed[:room])

    @property
    def not_listed(self) -> int:
        return self.skipped - len(self.listed)

    def summary(self) -> str:
        if not self.skipped:
            return f"kept all {self.kept} records"
        share = 100.0 * self.skipped / self.total
        lines = [f"kept {self.kept} of {self.total} records; skipped {self.skipped} ({share:.1f}%)"]
        lines += [f"  {count} x {key}" for key, count in self.reasons.most_common()]
        lines.append("skipped records:")
        lines += [f"  {error}" for error in self.listed]
        if self.not_listed:
            lines.append(f"  ... and {self.not_listed} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"kept": self.kept, "skipped": self.skipped, "reasons": dict(self.reasons),
                "listed": [e.to_dict() for e in self.listed], "not_listed": self.not_listed}


def _reason_key(error: RecordError) -> str:
    return f"{error.field}: {error.reason}" if error.field else error.reason
