"""A SQLite cache in front of any Backend, so rerunning an evaluation costs no new model calls.

The key is a SHA-256 of the backend's model id, the decoding parameters (`SamplingParams.key()`,
which includes n and the seed), the call kind (chat or complete) and the full prompt. With
temperature > 0 and no seed, a cached sample is replayed rather than drawn again: set a seed per
run if fresh samples are wanted.

Several processes may share one file: WAL journal, a busy timeout, one short transaction per
batch, and INSERT OR IGNORE so two writers racing on the same key both succeed. Errored
completions (finish_reason == "error") are never stored, so a rerun retries them.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from alignkit.generation.backend import Backend, Completion, Message, SamplingParams

_SCHEMA = """CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    request TEXT NOT NULL,
    completions TEXT NOT NULL,
    created REAL NOT NULL
)"""
BUSY_TIMEOUT_S = 60.0


@dataclass
class CacheStats:
    hits: int = 0  # prompts answered from the cache
    misses: int = 0  # prompts not in the cache (repeats within one batch are sent once)
    backend_calls: int = 0  # chat/complete calls made on the wrapped backend
    stored: int = 0  # prompts newly written to the cache
    errors_not_cached: int = 0  # prompts whose completions included an error, so were not stored


def cache_key(model_id: str, kind: str, params: SamplingParams, prompt: list[Message] | str) -> tuple[str, str]:
    """(hex key, canonical request JSON) for one prompt."""
    request = json.dumps({"model_id": model_id, "kind": kind, "params": params.key(), "prompt": prompt},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(request.encode("utf-8")).hexdigest(), request


class CachedBackend:
    """Wraps `backend`; `chat` and `complete` answer from `path` where they can, and store new results."""

    def __init__(self, backend: Backend, path: str | os.PathLike):
        self.backend = backend
        self.model_id = backend.model_id
        self.path = Path(path)
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._connection_pid: int | None = None

    def _db(self) -> sqlite3.Connection:
        # A connection must not cross a fork, so a child process opens its own.
        if self._connection is None or self._connection_pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
            connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            _use_wal(connection)
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute(_SCHEMA)
            self._connection, self._connection_pid = connection, os.getpid()
        return self._connection

    def close(self) -> None:
        if self._connection is not None and self._connection_pid == os.getpid():
            self._connection.close()
        self._connection = None

    def __enter__(self) -> "CachedBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chat(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        return self._cached("chat", [list(c) for c in conversations], params, self.backend.chat)

    def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        return self._cached("complete", list(prompts), params, self.backend.complete)

    def _cached(self, kind: str, prompts: list, params: SamplingParams, call) -> list[list[Completion]]:
        keyed = [cache_key(self.model_id, kind, params, prompt) for prompt in prompts]
        with self._lock:
            found = self._lookup({key for key, _ in keyed})
        # Identical prompts in one batch go to the backend once, as they would on a rerun.
        todo: dict[str, int] = {}
        for index, (key, _) in enumerate(keyed):
            if key not in found and key not in todo:
                todo[key] = index
        fresh: dict[str, list[Completion]] = {}
        if todo:
            replies = call([prompts[index] for index in todo.values()], params)
            if len(replies) != len(todo):
                raise RuntimeError(f"backend {self.model_id!r} returned {len(replies)} replies for {len(todo)} prompts")
            fresh = dict(zip(todo, replies))
            storable = [(key, keyed[todo[key]][1], completions) for key, completions in fresh.items()
                        if not any(c.finish_reason == "error" for c in completions)]
            with self._lock:
                self.stats.backend_calls += 1
                self.stats.errors_not_cached += len(fresh) - len(storable)
                self.stats.stored += self._store(storable)
        results = []
        with self._lock:
            for key, _ in keyed:
                if key in found:
                    self.stats.hits += 1
                else:
                    self.stats.misses += 1
                # Copies, so a caller editing one result cannot change another or the cache.
                results.append([Completion(**asdict(c)) for c in (found[key] if key in found else fresh[key])])
        return results

    def _lookup(self, keys: set[str]) -> dict[str, list[Completion]]:
        found: dict[str, list[Completion]] = {}
        key_list = sorted(keys)
        db = self._db()
        for start in range(0, len(key_list), 500):  # stay under SQLite's bound-parameter limit
            chunk = key_list[start:start + 500]
            rows = db.execute(f"SELECT key, completions FROM completions WHERE key IN ({','.join('?' * len(chunk))})",
                              chunk).fetchall()
            for key, payload in rows:
                found[key] = [Completion(**c) for c in json.loads(payload)]
        return found

    def _store(self, rows: list[tuple[str, str, list[Completion]]]) -> int:
        if not rows:
            return 0
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.total_changes
            now = time.time()
            db.executemany("INSERT OR IGNORE INTO completions (key, model_id, request, completions, created) "
                           "VALUES (?, ?, ?, ?, ?)",
                           [(key, self.model_id, request, json.dumps([asdict(c) for c in completions]), now)
                            for key, request, completions in rows])
            stored = db.total_changes - before
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return stored

    def __len__(self) -> int:
        """Number of cached prompts in the file (all processes, all models)."""
        with self._lock:
            return self._db().execute("SELECT COUNT(*) FROM completions").fetchone()[0]


def _use_wal(connection: sqlite3.Connection) -> None:
    """Switch the file to WAL (a setting stored in the file, so once per cache). SQLite does not call the
    busy handler while it changes the journal mode, so two processes opening a new cache at once can
    get "database is locked" here however long the busy timeout: wait for the other one, as the busy
    handler would, up to the same timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
