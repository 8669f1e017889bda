"""A job's journal: results appended as they arrive with stable ids, so a killed job resumes where it stopped.

`output_dir/journal.jsonl` starts with a header line holding the job's name and the config that decides
its results; every later line is one finished unit of work (`{"id": ..., ...}`), appended and flushed
to disk as its batch of calls comes back. A kill loses at most the calls in flight: the next run drops
a half-written last line, skips every id already in the journal and goes on in the same order, and its
calls already answered come back from the SQLite cache. Outputs (`sft.jsonl`, `pairs.jsonl`, ...) and
`summary.json` are written from the journal in one atomic step at the end, so they are never half-written
and a resumed job's outputs equal an uninterrupted one's.

A rerun with a config that would change the results stops with the keys that differ, unless
`if_exists: overwrite` (start over; the cache stays, so calls asked again are replayed, not repeated).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterable, Sequence

from tqdm.auto import tqdm

from alignkit.atomic_write import fsync_path, write_json_atomic, write_jsonl_atomic
from alignkit.config import ConfigError
from alignkit.construction.counts import Counts, JobResult

JOURNAL = "journal.jsonl"
CACHE = "cache.sqlite"
SUMMARY = "summary.json"
IF_EXISTS = ("resume", "overwrite")


class Journal:
    def __init__(self, output_dir: str, job: str, config: dict, *, outputs: Sequence[str] = (),
                 if_exists: str = "resume"):
        """`config`: what decides the results (leave out batch sizes and the like, which a resumed job may
        change); `outputs`: the file names the job writes, removed when it starts over."""
        if if_exists not in IF_EXISTS:
            raise ConfigError(f"if_exists: must be one of {', '.join(IF_EXISTS)}, got {if_exists!r}")
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, JOURNAL)
        self.header = {"job": job, "config": config}
        self.outputs = tuple(outputs)
        os.makedirs(output_dir, exist_ok=True)
        self.entries: dict[str, dict] = {}
        if if_exists == "overwrite" or not os.path.exists(self.path):
            self._start()
        else:
            self._read()

    @property
    def cache_path(self) -> str:
        return os.path.join(self.output_dir, CACHE)

    def _start(self) -> None:
        for name in (*self.outputs, SUMMARY):  # earlier outputs would read as this run's
            if os.path.exists(os.path.join(self.output_dir, name)):
                os.remove(os.path.join(self.output_dir, name))
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.header, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_path(self.output_dir)

    def _read(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        good = data.rfind(b"\n") + 1  # a kill mid-write leaves a last line without its newline
        lines = data[:good].decode("utf-8").splitlines()
        if not lines:
            self._start()
            return
        header = json.loads(lines[0])
        if header != self.header:
            raise ConfigError(f"{self.path}: this folder holds a {header.get('job')!r} job with another config "
                              f"({_differences(header, self.header)}); to start over set if_exists=overwrite, "
                              "or choose another output_dir")
        for line in lines[1:]:
            entry = json.loads(line)
            self.entries[entry["id"]] = entry
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def __contains__(self, unit_id: str) -> bool:
        return unit_id in self.entries

    def append(self, entries: Iterable[dict]) -> None:
        entries = list(entries)
        if not entries:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries))
            f.flush()
            os.fsync(f.fileno())
        for entry in entries:
            self.entries[entry["id"]] = entry

    def finish(self, outputs: dict[str, list[dict]], counts: Counts, **extra) -> JobResult:
        """Write each output file, then summary.json (the rows written, the counts and `extra`), each
        atomically, into the job's folder."""
        for name, rows in outputs.items():
            write_jsonl_atomic(os.path.join(self.output_dir, name), rows)
        result = JobResult(self.output_dir, {name: len(rows) for name, rows in outputs.items()}, counts)
        write_json_atomic(os.path.join(self.output_dir, SUMMARY), {**result.summary(), **extra})
        return result


def run_pending(journal: Journal, units: Sequence[tuple[str, Any]],
                process: Callable[[list[Any]], list[dict]], *, chunk_size: int, desc: str,
                progress: bool = True, backend: Any = None) -> list[dict]:
    """Process every unit (id, payload) not yet in the journal, `chunk_size` at a time and in order, and
    journal each chunk's results as it finishes; returns the journal entries of all `units`, in order.

    `process(payloads)` returns one entry (a dict) per payload; the unit's id is added to it. The bar shows
    units done of all, and, given the (cached) backend, model calls per second and calls the cache answered.
    """
    ids = [unit_id for unit_id, _ in units]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{desc}: unit ids repeat; each unit of work needs its own id")
    pending = [(unit_id, payload) for unit_id, payload in units if unit_id not in journal]
    started = time.perf_counter()
    stats = _cache_stats(backend)
    calls_before = stats.misses if stats else 0
    with tqdm(total=len(units), initial=len(units) - len(pending), desc=desc, unit="item",
              disable=not progress) as bar:
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start:start + chunk_size]
            results = process([payload for _, payload in chunk])
            if len(results) != len(chunk):
                raise RuntimeError(f"{desc}: {len(results)} results for {len(chunk)} items")
            journal.append({"id": unit_id, **result} for (unit_id, _), result in zip(chunk, results))
            bar.update(len(chunk))
            if stats:
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(calls_s=f"{(stats.misses - calls_before) / elapsed:.2f}", cached=stats.hits)
    return [journal.entries[unit_id] for unit_id in ids]


def _cache_stats(backend: Any):
    layer = backend
    while layer is not None:
        stats = getattr(layer, "stats", None)
        if stats is not None and hasattr(stats, "misses"):
            return stats
        layer = getattr(layer, "backend", None)
    return None


def _differences(old: dict, new: dict) -> str:
    flat_old, flat_new = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
    shown = [f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in keys[:4]]
    return "; ".join(shown) + (f"; and {len(keys) - 4} more" if len(keys) > 4 else "")


def _flatten(tree: Any, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# Keys that change how a job runs, never what it produces: a resumed job may change them.
OPERATIONAL_KEYS = frozenset({"output_dir", "if_exists", "progress", "batch_size", "concurrency", "timeout",
                              "retries", "base_url", "api_key_env"})


def result_config(config: Any) -> dict:
    """A job config as the journal's header keeps it: every key but the operational ones, at any depth."""
    import dataclasses

    def strip(tree: Any) -> Any:
        if isinstance(tree, dict):
            return {k: strip(v) for k, v in tree.items() if k not in OPERATIONAL_KEYS}
        if isinstance(tree, (list, tuple)):
            return [strip(v) for v in tree]
        return tree

    return strip(dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config))
