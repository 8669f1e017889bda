"""Everything the annotation app keeps, in one SQLite file: annotators, items, who works on what, votes, battles.

SQLite in WAL mode with `synchronous=FULL`: a vote is committed (and on disk) before its request is
answered, so an acknowledged vote survives the server being killed, and several annotators write at once
without losing one (each write is its own `BEGIN IMMEDIATE` transaction; writers queue on the lock).

Work is handed out by claims. An annotator asking for work gets their open claim if they have one, else
the first item (in task-file order) that they have not claimed and that fewer than `k` annotators hold
(answered, or claimed within `claim_ttl` seconds): each item goes to `k` annotators, and everyone works the
same items first, so items complete early. A skip gives the slot back; undo reopens the last answer.
A vote is always accepted for an item its annotator has not answered (no vote is turned away because a
claim expired), so an item can end with more than `k` votes, never fewer for a vote that was sent.
Tokens are stored as SHA-256 hashes; a lost token is replaced with `add-annotator --new-token`.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from alignkit.annotation.tasks import TaskItem, parse_item
from alignkit.data.errors import DataError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token_hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    item_id TEXT NOT NULL REFERENCES items(id), annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    state TEXT NOT NULL CHECK (state IN ('open', 'done', 'skipped')), updated_at REAL NOT NULL,
    PRIMARY KEY (item_id, annotator_id));
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY, item_id TEXT NOT NULL REFERENCES items(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id), answer TEXT NOT NULL, shown_order TEXT NOT NULL,
    submission TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, seconds REAL, undone_at REAL);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_vote ON votes (item_id, annotator_id) WHERE undone_at IS NULL;
CREATE TABLE IF NOT EXISTS battles (
    id INTEGER PRIMARY KEY, annotator_id INTEGER NOT NULL REFERENCES annotators(id), prompt TEXT NOT NULL,
    model_a TEXT NOT NULL, model_b TEXT NOT NULL, response_a TEXT NOT NULL, response_b TEXT NOT NULL,
    created_at REAL NOT NULL, winner TEXT, voted_at REAL, submission TEXT UNIQUE);
"""
BATTLE_WINNERS = ("a", "b", "tie", "both_bad")


class StoreError(ValueError):
    """A request the store cannot honour (unknown item, answered twice, ...); the message says why."""


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    admin: bool


@dataclass(frozen=True)
class Vote:
    id: int
    item_id: str
    annotator: str
    answer: dict
    shown_order: list[int]
    created_at: float
    seconds: float | None
    undone_at: float | None


@dataclass(frozen=True)
class Battle:
    id: int
    annotator: str
    prompt: str
    model_a: str
    model_b: str
    response_a: str
    response_b: str
    created_at: float
    winner: str | None
    voted_at: float | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Store:
    def __init__(self, path: str | Path, *, k: int | None = None, claim_ttl: float = 1800.0):
        self.path = str(path)
        self.claim_ttl = claim_ttl
        # Writers of this process queue here rather than on SQLite's busy handler, which sleeps in steps
        # of up to 100 ms: under 20 annotators at once that sleeping, not the disk, made the slowest answers.
        self._writer = threading.Lock()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (secrets.token_hex(32),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('seed', ?)", (str(secrets.randbelow(2**31)),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('k', '1')")
            if k is not None:
                if k < 1:
                    raise DataError(f"k: annotators per item must be at least 1, got {k}")
                db.execute("UPDATE meta SET value = ? WHERE key = 'k'", (str(k),))
            meta = dict(db.execute("SELECT key, value FROM meta"))
        self.secret = bytes.fromhex(meta["secret"])  # signs the cross-site request tokens of forms
        self.seed = int(meta["seed"])  # sides shown to each annotator
        self.k = int(meta["k"])

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per operation: requests run on a thread pool, and a connection is cheap.
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed before it returns; taken at once so readers of counts see no race."""
        with self._connect() as db, self._writer:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ------------------------------------------------------------------ annotators

    def add_annotator(self, name: str, *, admin: bool = False, new_token: bool = False) -> str:
        """Creates an annotator (or, with new_token, replaces an existing one's token); returns the token."""
        if not name or not name.strip() or len(name) > 64:
            raise DataError(f"annotator name: expected 1 to 64 characters, got {name!r}")
        token = secrets.token_urlsafe(24)
        with self._write() as db:
            exists = db.execute("SELECT id FROM annotators WHERE name = ?", (name,)).fetchone()
            if exists and not new_token:
                raise DataError(f"annotator {name!r} already exists (add --new-token to replace the token)")
            if exists:
                db.execute("UPDATE annotators SET token_hash = ?, admin = ? WHERE id = ?",
                           (hash_token(token), int(admin), exists[0]))
            else:
                db.execute("INSERT INTO annotators (name, token_hash, admin, created_at) VALUES (?, ?, ?, ?)",
                           (name, hash_token(token), int(admin), time.time()))
        return token

    def annotator_for(self, token: str) -> Annotator | None:
        with self._connect() as db:
            row = db.execute("SELECT id, name, admin FROM annotators WHERE token_hash = ?",
                             (hash_token(token),)).fetchone()
        return Annotator(row[0], row[1], bool(row[2])) if row else None

    def annotators(self) -> list[Annotator]:
        with self._connect() as db:
            return [Annotator(r[0], r[1], bool(r[2])) for r in db.execute("SELECT id, name, admin FROM annotators "
                                                                            "ORDER BY name")]

    # ------------------------------------------------------------------ items

    def load_items(self, items: Sequence[TaskItem]) -> int:
        """Adds the task file's items; returns how many were new. An item whose id is stored with other
        content stops everything: votes on it would no longer mean what they meant."""
        added = 0
        with self._write() as db:
            position = db.execute("SELECT COALESCE(MAX(position), -1) FROM items").fetchone()[0]
            for item in items:
                stored = db.execute("SELECT body FROM items WHERE id = ?", (item.id,)).fetchone()
                if stored:
                    if stored[0] != item.body():
                        raise DataError(f"{item.where}: item {item.id!r} is stored in {self.path} with other "
                                        "content; give changed items new ids, or use a new --db")
                    continue
                position += 1
                db.execute("INSERT INTO items VALUES (?, ?, ?, ?)", (item.id, position, item.kind, item.body()))
                added += 1
        return added

    def item(self, item_id: str) -> TaskItem:
        with self._connect() as db:
            row = db.execute("SELECT body FROM items WHERE id = ?", (item_id,)).fetchone()
        if not row:
            raise StoreError(f"no item {item_id!r}")
        return parse_item(json.loads(row[0]), item_id)

    def items(self) -> list[TaskItem]:
        with self._connect() as db:
            rows = db.execute("SELECT id, body FROM items ORDER BY position").fetchall()
        return [parse_item(json.loads(body), item_id) for item_id, body in rows]

    # ------------------------------------------------------------------ work

    def next_item(self, annotator: Annotator) -> str | None:
        """The item this annotator should answer now (claimed for them), or None when their queue is empty."""
        with self._write() as db:
            for (item_id,) in db.execute("SELECT item_id FROM claims WHERE annotator_id = ? AND state = 'open' "
                                         "ORDER BY updated_at DESC", (annotator.id,)).fetchall():
                done = db.execute("SELECT COUNT(*) FROM claims WHERE item_id = ? AND state = 'done'",
                                  (item_id,)).fetchone()[0]
                if done < self.k:
                    return item_id
                # Others finished it while this claim lay idle past its time: let it go.
                db.execute("DELETE FROM claims WHERE item_id = ? AND annotator_id = ?", (item_id, annotator.id))
            cutoff = time.time() - self.claim_ttl
            row = db.execute(
                "SELECT i.id FROM items i WHERE NOT EXISTS (SELECT 1 FROM claims c WHERE c.item_id = i.id AND "
                "c.annotator_id = ?) AND (SELECT COUNT(*) FROM claims c WHERE c.item_id = i.id AND (c.state = "
                "'done' OR (c.state = 'open' AND c.updated_at > ?))) < ? ORDER BY i.position LIMIT 1",
                (annotator.id, cutoff, self.k)).fetchone()
            if row is None:
                return None
            db.execute("INSERT INTO claims VALUES (?, ?, 'open', ?)", (row[0], annotator.id, time.time()))
            return row[0]

    def record_vote(self, annotator: Annotator, item_id: str, answer: dict, shown: list[int], submission: str,
                    seconds: float | None = None) -> tuple[int, bool]:
        """Stores one answer; returns (vote id, whether it was new). The same submission sent twice (a
        double click, a retried request) is stored once."""
        with self._write() as db:
            row = db.execute("SELECT id, annotator_id, item_id FROM votes WHERE submission = ?",
                             (submission,)).fetchone()
            if row:
                if (row[1], row[2]) != (annotator.id, item_id):
                    raise StoreError("submission id already used for another answer")
                return row[0], False
            if not db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone():
                raise StoreError(f"no item {item_id!r}")
            if db.execute("SELECT 1 FROM votes WHERE item_id = ? AND annotator_id = ? AND undone_at IS NULL",
                          (item_id, annotator.id)).fetchone():
                raise StoreError(f"item {item_id!r} is already answered (undo it first to change the answer)")
            cursor = db.execute("INSERT INTO votes (item_id, annotator_id, answer, shown_order, submission, "
                                "created_at, seconds) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (item_id, annotator.id, json.dumps(answer, ensure_ascii=False), json.dumps(shown),
                                 submission, time.time(), seconds))
            db.execute("INSERT INTO claims VALUES (?, ?, 'done', ?) ON CONFLICT (item_id, annotator_id) DO UPDATE "
                       "SET state = 'done', updated_at = excluded.updated_at", (item_id, annotator.id, time.time()))
            return cursor.lastrowid, True

    def skip(self, annotator: Annotator, item_id: str) -> None:
        """Gives the item's slot back; this annotator is not offered it again."""
        with self._write() as db:
            if not db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone():
                raise StoreError(f"no item {item_id!r}")
            db.execute("INSERT INTO claims VALUES (?, ?, 'skipped', ?) ON CONFLICT (item_id, annotator_id) DO UPDATE "
                       "SET state = 'skipped', updated_at = excluded.updated_at WHERE state = 'open'",
                       (item_id, annotator.id, time.time()))

    def undo(self, annotator: Annotator) -> str | None:
        """Withdraws this annotator's latest answer (kept, marked undone) and reopens its item for them."""
        with self._write() as db:
            row = db.execute("SELECT id, item_id FROM votes WHERE annotator_id = ? AND undone_at IS NULL "
                             "ORDER BY id DESC LIMIT 1", (annotator.id,)).fetchone()
            if row is None:
                return None
            now = time.time()
            db.execute("UPDATE votes SET undone_at = ? WHERE id = ?", (now, row[0]))
            # The reopened item comes next: an annotator's most recently opened claim is served first.
            db.execute("UPDATE claims SET state = 'open', updated_at = ? WHERE item_id = ? AND annotator_id = ?",
                       (now, row[1], annotator.id))
            return row[1]

    # ------------------------------------------------------------------ progress

    def progress(self, annotator: Annotator) -> dict:
        """This annotator's answered, skipped and still-to-do counts."""
        with self._connect() as db:
            states = dict(db.execute("SELECT state, COUNT(*) FROM claims WHERE annotator_id = ? GROUP BY state",
                                     (annotator.id,)).fetchall())
            cutoff = time.time() - self.claim_ttl
            free = db.execute(
                "SELECT COUNT(*) FROM items i WHERE NOT EXISTS (SELECT 1 FROM claims c WHERE c.item_id = i.id AND "
                "c.annotator_id = ?) AND (SELECT COUNT(*) FROM claims c WHERE c.item_id = i.id AND (c.state = "
                "'done' OR (c.state = 'open' AND c.updated_at > ?))) < ?", (annotator.id, cutoff, self.k)).fetchone()[0]
        done, todo = states.get("done", 0), states.get("open", 0) + free
        return {"done": done, "skipped": states.get("skipped", 0), "todo": todo, "total": done + todo}

    def overview(self) -> dict:
        """The admin page: items complete, and each annotator's counts and last activity."""
        with self._connect() as db:
            items = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            complete = db.execute("SELECT COUNT(*) FROM (SELECT item_id FROM votes WHERE undone_at IS NULL "
                                  "GROUP BY item_id HAVING COUNT(*) >= ?)", (self.k,)).fetchone()[0]
            votes = db.execute("SELECT COUNT(*) FROM votes WHERE undone_at IS NULL").fetchone()[0]
            battles = db.execute("SELECT COUNT(*) FROM battles WHERE winner IS NOT NULL").fetchone()[0]
            people = []
            for annotator_id, name, admin in db.execute("SELECT id, name, admin FROM annotators ORDER BY name"):
                counts = dict(db.execute("SELECT state, COUNT(*) FROM claims WHERE annotator_id = ? GROUP BY state",
                                         (annotator_id,)).fetchall())
                last, seconds = db.execute("SELECT MAX(created_at), AVG(seconds) FROM votes WHERE annotator_id = ? "
                                           "AND undone_at IS NULL", (annotator_id,)).fetchone()
                undone = db.execute("SELECT COUNT(*) FROM votes WHERE annotator_id = ? AND undone_at IS NOT NULL",
                                    (annotator_id,)).fetchone()[0]
                arena = db.execute("SELECT COUNT(*) FROM battles WHERE annotator_id = ? AND winner IS NOT NULL",
                                   (annotator_id,)).fetchone()[0]
                people.append({"name": name, "admin": bool(admin), "done": counts.get("done", 0),
                               "skipped": counts.get("skipped", 0), "open": counts.get("open", 0), "undone": undone,
                               "battles": arena, "last_vote": last, "mean_seconds": seconds})
        return {"item_count": items, "complete": complete, "k": self.k, "votes": votes, "battles": battles,
                "annotators": people}

    # ------------------------------------------------------------------ reading votes

    def votes(self, *, include_undone: bool = False) -> list[Vote]:
        where = "" if include_undone else "WHERE v.undone_at IS NULL"
        with self._connect() as db:
            rows = db.execute(f"SELECT v.id, v.item_id, a.name, v.answer, v.shown_order, v.created_at, v.seconds, "
                              f"v.undone_at FROM votes v JOIN annotators a ON a.id = v.annotator_id {where} "
                              "ORDER BY v.id").fetchall()
        return [Vote(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]), r[5], r[6], r[7]) for r in rows]

    # ------------------------------------------------------------------ arena

    def add_battle(self, annotator: Annotator, prompt: str, model_a: str, model_b: str, response_a: str,
                   response_b: str) -> int:
        with self._write() as db:
            return db.execute("INSERT INTO battles (annotator_id, prompt, model_a, model_b, response_a, response_b, "
                              "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (annotator.id, prompt, model_a, model_b, response_a, response_b, time.time())).lastrowid

    def battle(self, battle_id: int, annotator: Annotator | None = None) -> Battle:
        """One battle; with `annotator`, only one of theirs (another's battle is not found)."""
        query = ("SELECT b.id, a.name, b.prompt, b.model_a, b.model_b, b.response_a, b.response_b, b.created_at, "
                 "b.winner, b.voted_at, b.annotator_id FROM battles b JOIN annotators a ON a.id = b.annotator_id "
                 "WHERE b.id = ?")
        with self._connect() as db:
            row = db.execute(query, (battle_id,)).fetchone()
        if row is None or (annotator is not None and row[10] != annotator.id):
            raise StoreError(f"no battle {battle_id}")
        return Battle(*row[:10])

    def vote_battle(self, annotator: Annotator, battle_id: int, winner: str, submission: str) -> bool:
        """Records the winner once; returns whether this call recorded it (False: the same vote again)."""
        if winner not in BATTLE_WINNERS:
            raise StoreError(f"winner: expected one of {', '.join(BATTLE_WINNERS)}, got {winner!r}")
        with self._write() as db:
            row = db.execute("SELECT annotator_id, winner, submission FROM battles WHERE id = ?", (battle_id,)).fetchone()
            if row is None or row[0] != annotator.id:
                raise StoreError(f"no battle {battle_id}")
            if row[1] is not None:
                if row[2] == submission:
                    return False
                raise StoreError(f"battle {battle_id} already has a vote")
            db.execute("UPDATE battles SET winner = ?, voted_at = ?, submission = ? WHERE id = ?",
                       (winner, time.time(), submission, battle_id))
            return True

    def battles(self) -> list[Battle]:
        with self._connect() as db:
            rows = db.execute("SELECT b.id, a.name, b.prompt, b.model_a, b.model_b, b.response_a, b.response_b, "
                              "b.created_at, b.winner, b.voted_at FROM battles b JOIN annotators a "
                              "ON a.id = b.annotator_id ORDER BY b.id").fetchall()
        return [Battle(*r) for r in rows]
