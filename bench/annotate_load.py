"""Load and kill test of the annotation app: many annotators voting at once through the JSON API.

    .venv/bin/python bench/annotate_load.py                    # 200 pairwise items, k=3, 20 annotators
    .venv/bin/python bench/annotate_load.py --kill-after 3     # SIGKILL the server 3 s in, then restart it

Starts `alignkit annotate serve` as a subprocess (uvicorn on 127.0.0.1, a free port) on a fresh SQLite
file, then runs one thread per annotator, each with its own `httpx.Client` and bearer token: GET
/api/next, POST /api/answer with a seeded random choice and a unique submission id, until the queue is
empty or --cap answers stand. Some answers are sent a second time with the same submission id (a retried
request: it must be stored once), some are undone and answered again, some items are skipped.

An annotator whose queue is empty waits while others still work, and looks again after each skip: a
skip frees a slot that only an annotator who has not seen the item can fill, so "every item ends with k
votes" holds only if annotators who finished early come back (as people would).

With --kill-after S the server gets SIGKILL S seconds into the run and is started again on the same file
and port. Requests that fail meanwhile are sent again once it is back, an answer with its SAME submission
id: a vote committed just before the kill must come back as already stored, not be stored twice. An undo
is never sent twice (it is not idempotent); whether a lost one happened shows in the next item served.

At the end the votes table is read with sqlite3 and compared with what the server acknowledged. Exits 1
if an acknowledged vote is missing, a vote is stored twice, an item ends with more than k live votes, or
a request failed in a way a client should never see.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

CHOICES = ("left", "right", "tie", "both_bad")
# The same function `alignkit annotate serve` calls, without the CLI's imports of the training stack
# (about 5 s of torch on a small machine): for tests that start servers several times.
FUNCTION_LAUNCH = ("import sys; from alignkit.annotation.commands import serve_annotation; "
                   "serve_annotation(sys.argv[1], [sys.argv[2]], k=int(sys.argv[3]), port=int(sys.argv[4]))")


# ---------------------------------------------------------------------------------------------- setup


def write_tasks(path: str | Path, items: int) -> list[str]:
    """A task file of `items` pairwise items; returns their ids in file order."""
    ids = [f"item-{index:04d}" for index in range(items)]
    with open(path, "w", encoding="utf-8") as out:
        for index, item_id in enumerate(ids):
            record = {"id": item_id, "kind": "pairwise", "prompt": f"Question {index}: which answer is better?",
                      "responses": [{"content": f"The first answer to {index}.", "model": "one"},
                                    {"content": f"The second answer to {index}.", "model": "two"}]}
            out.write(json.dumps(record) + "\n")
    return ids


def add_annotators(db: str | Path, count: int) -> dict[str, str]:
    """Creates `count` annotators in `db` (before any server runs); returns {name: token}."""
    from alignkit.annotation.store import Store

    store = Store(db)
    return {name: store.add_annotator(name) for name in (f"annotator-{index:02d}" for index in range(count))}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """The annotation server in a subprocess, always on one port: clients reach a restarted one at the
    address they already have."""

    def __init__(self, db: str | Path, tasks: str | Path, k: int, log_path: str | Path, *, cli: bool = True,
                 port: int | None = None):
        self.db, self.tasks, self.k, self.log_path, self.cli = str(db), str(tasks), k, str(log_path), cli
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.cli:
            return [sys.executable, "-m", "alignkit.cli", "annotate", "serve", "--db", self.db, "--tasks", self.tasks,
                    "--k", str(self.k), "--host", "127.0.0.1", "--port", str(self.port)]
        return [sys.executable, "-c", FUNCTION_LAUNCH, self.db, self.tasks, str(self.k), str(self.port)]

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self, timeout: float = 180.0) -> float:
        """Starts the server and returns the seconds until it answered a request."""
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "OMP_NUM_THREADS": "1"})
        with httpx.Client(timeout=5.0) as probe:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise RuntimeError(f"the annotation server exited with code {code}:\n{self.log_tail()}")
                try:
                    if probe.get(self.base_url + "/login").status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                if time.monotonic() - started > timeout:
                    self.kill()
                    raise RuntimeError(f"the annotation server did not answer within {timeout:.0f} s:\n"
                                       f"{self.log_tail()}")
                time.sleep(0.05)  # polling a port that is not open yet; the deadline above bounds it

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------- clients


@dataclass(frozen=True)
class Ack:
    """An answer the server acknowledged (HTTP 200 with a vote id)."""
    vote: int
    item: str
    annotator: str
    choice: str  # as it must be stored: "1" / "2" for the task file's responses, or tie / both_bad


@dataclass
class Tally:
    """What one annotator's client saw."""
    acks: dict[str, Ack] = field(default_factory=dict)  # submission id -> ack
    undone: set[str] = field(default_factory=set)  # submissions withdrawn with /api/undo
    resends: int = 0  # answers sent again with the same submission id after their ack
    counted_again: list[str] = field(default_factory=list)  # resends the server took as a new vote
    skips: int = 0
    reconnects: int = 0  # requests sent again after a connection error
    recovered: int = 0  # answers sent again after a connection error that the server already had
    lost_undos: int = 0  # undos whose reply was lost (resolved from the next item served)
    latencies: list[float] = field(default_factory=list)  # seconds of each acknowledged POST /api/answer
    errors: list[str] = field(default_factory=list)
    capped: bool = False


class Run:
    """State the annotator threads and the controller share."""

    def __init__(self, annotators: int):
        self.cond = threading.Condition()
        self.up = threading.Event()  # cleared while the server is down: clients wait here instead of spinning
        self.up.set()
        self.acked = 0
        self.active = annotators  # annotators working: neither waiting for freed slots nor gone
        self.waiting = 0  # annotators with an empty queue, waiting for a skip to free a slot
        self.finished = 0
        self.releases = 0  # skips so far: each frees a slot someone idle may take
        self.wakes = 0  # skips that found annotators waiting and woke them

    def note_ack(self) -> None:
        with self.cond:
            self.acked += 1
            self.cond.notify_all()

    def note_skip(self) -> None:
        with self.cond:
            self.releases += 1
            # The woken count as working from now, under the lock: "nobody works" must never hold
            # while one of them has yet to look at the freed slot, or the others would leave too early.
            self.active += self.waiting
            self.waiting = 0
            self.wakes += 1
            self.cond.notify_all()

    def wait_for_work(self, seen: int, deadline: float) -> bool:
        """Called with an empty queue, `seen` being `releases` before asking. True: look again (a skip
        may have freed a slot); False: leave, since nobody works who could free one (or at the deadline)."""
        with self.cond:
            if self.releases != seen:
                return True
            self.active -= 1
            self.waiting += 1
            wake = self.wakes
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.wakes != wake or self.active == 0,
                               timeout=max(0.0, deadline - time.monotonic()))
            if self.wakes != wake:
                return True
            self.waiting -= 1
            return False

    def leave(self, counted_active: bool) -> None:
        with self.cond:
            if counted_active:
                self.active -= 1
            self.finished += 1
            self.cond.notify_all()


@dataclass(frozen=True)
class Behaviour:
    seed: int = 0
    cap: int = 200  # answers standing per annotator
    retry_frac: float = 0.1  # answers sent twice with the same submission id
    undo_frac: float = 0.03
    skip_frac: float = 0.02
    reconnect_timeout: float = 180.0  # how long a request keeps being retried while the server is away
    deadline: float = 600.0  # the whole run, per annotator


def annotate(run: Run, base_url: str, name: str, token: str, how: Behaviour, tally: Tally) -> None:
    """One annotator's bounded loop; see the module docstring."""
    rng = random.Random(f"{how.seed}:{name}")
    deadline = time.monotonic() + how.deadline
    active = True
    try:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0) as client:

            def call(method: str, path: str, body: dict | None = None, *, resend: bool = True):
                """The response and the seconds of the attempt that got it, and whether earlier ones failed."""
                give_up = time.monotonic() + how.reconnect_timeout
                failed = False
                while True:
                    run.up.wait(max(0.0, give_up - time.monotonic()))
                    started = time.perf_counter()
                    try:
                        return client.request(method, path, json=body), time.perf_counter() - started, failed
                    except httpx.TransportError:
                        if not resend or time.monotonic() > give_up:
                            raise
                        failed = True
                        tally.reconnects += 1
                        # Backoff for the moment between the server dying and the controller noticing;
                        # the restart itself is waited for on run.up.
                        time.sleep(0.05)

            live, number, steps = 0, 0, 0
            lost_undo: tuple[str, str] | None = None  # (submission, item) of an undo whose reply was lost
            while (live < how.cap or lost_undo) and steps < 4 * how.cap + 20 and time.monotonic() < deadline:
                steps += 1
                seen = run.releases
                response, _, _ = call("GET", "/api/next")
                if response.status_code != 200:
                    tally.errors.append(f"GET /api/next: HTTP {response.status_code} {response.text[:200]}")
                    return
                item = response.json()["item"]
                if lost_undo is not None:
                    # An undone item is served again first; otherwise the undo never happened.
                    if item is not None and item["id"] == lost_undo[1]:
                        tally.undone.add(lost_undo[0])
                        live -= 1
                    lost_undo = None
                    if live >= how.cap:
                        break
                if item is None:
                    if run.wait_for_work(seen, deadline):
                        continue
                    active = False
                    return
                if item["kind"] != "pairwise" or len(item["shown_order"]) != 2:
                    tally.errors.append(f"GET /api/next: unexpected item {item!r}")
                    return
                if rng.random() < how.skip_frac:
                    response, _, _ = call("POST", "/api/skip", {"item": item["id"]})
                    if response.status_code != 200:
                        tally.errors.append(f"POST /api/skip: HTTP {response.status_code} {response.text[:200]}")
                        return
                    tally.skips += 1
                    run.note_skip()
                    continue
                number += 1
                choice = rng.choice(CHOICES)
                order = item["shown_order"]
                stored = {"left": str(order[0] + 1), "right": str(order[1] + 1)}.get(choice, choice)
                submission = f"{name}:{number}"
                body = {"item": item["id"], "submission": submission, "answer": {"choice": choice, "reason": "load"}}
                response, seconds, failed = call("POST", "/api/answer", body)
                if response.status_code != 200 or "vote" not in response.json():
                    tally.errors.append(f"POST /api/answer {submission}: HTTP {response.status_code} "
                                        f"{response.text[:200]}")
                    return
                reply = response.json()
                if not reply["new"]:
                    if failed:
                        tally.recovered += 1
                    else:
                        tally.errors.append(f"POST /api/answer {submission}: a first send came back as already stored")
                tally.latencies.append(seconds)
                tally.acks[submission] = Ack(reply["vote"], item["id"], name, stored)
                live += 1
                run.note_ack()
                if rng.random() < how.retry_frac:
                    again, seconds, _ = call("POST", "/api/answer", body)
                    tally.resends += 1
                    if again.status_code != 200 or again.json() != {"vote": reply["vote"], "new": False}:
                        tally.counted_again.append(f"{submission}: HTTP {again.status_code} {again.text[:200]}")
                    else:
                        tally.latencies.append(seconds)
                if rng.random() < how.undo_frac:
                    try:
                        response, _, _ = call("POST", "/api/undo", resend=False)
                    except httpx.TransportError:
                        tally.lost_undos += 1
                        lost_undo = (submission, item["id"])
                        continue
                    if response.status_code != 200 or response.json().get("reopened") != item["id"]:
                        tally.errors.append(f"POST /api/undo after {submission}: HTTP {response.status_code} "
                                            f"{response.text[:200]}")
                        return
                    tally.undone.add(submission)
                    live -= 1
            tally.capped = live >= how.cap
            if not tally.capped:
                tally.errors.append(f"stopped at the step or time limit with {live} answers standing")
    except Exception as error:  # a thread's exception would vanish; the report shows it
        tally.errors.append(f"{type(error).__name__}: {error}")
    finally:
        run.leave(active)


@dataclass
class KillPlan:
    after_seconds: float | None = None
    at_votes: int | None = None  # kill once this many answers are acknowledged


@dataclass
class Kill:
    at_seconds: float
    acked_before: int
    restart_seconds: float


def run_load(server: Server, tokens: dict[str, str], how: Behaviour = Behaviour(),
             kill: KillPlan | None = None) -> tuple[dict[str, Tally], float, Kill | None]:
    """Runs every annotator at once against a started server; returns their tallies, the seconds the
    run took, and the kill if one was made (None also when the run ended before its time)."""
    run = Run(len(tokens))
    tallies = {name: Tally() for name in tokens}
    threads = [threading.Thread(target=annotate, args=(run, server.base_url, name, token, how, tallies[name]),
                                name=f"annotator {name}", daemon=True) for name, token in tokens.items()]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    made = None
    if kill is not None:
        with run.cond:
            while run.finished < len(threads):
                elapsed = time.perf_counter() - started
                if kill.after_seconds is not None and elapsed >= kill.after_seconds:
                    break
                if kill.at_votes is not None and run.acked >= kill.at_votes:
                    break
                # Woken by every ack and every annotator leaving; the timeout only serves after_seconds.
                run.cond.wait(timeout=None if kill.after_seconds is None else kill.after_seconds - elapsed)
            due = run.finished < len(threads)
        if due:
            run.up.clear()  # before the kill: a client failing after it must find the gate shut
            killed_at, acked_before = time.perf_counter() - started, run.acked
            server.kill()
            restart = server.start()
            run.up.set()
            made = Kill(killed_at, acked_before, restart)
    end = time.monotonic() + how.deadline + 30
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    for name, thread in zip(tokens, threads):
        if thread.is_alive():
            tallies[name].errors.append("the annotator thread did not finish")
    return tallies, time.perf_counter() - started, made


# ---------------------------------------------------------------------------------------------- checks


@dataclass
class Audit:
    annotators: int
    items: int
    k: int
    acked: int  # acknowledged answers (each submission once), undone ones included
    stored: int  # rows in the votes table, undone ones included
    live: int  # rows not undone
    lost: int  # acknowledged, not stored
    duplicates: int  # answers stored or counted twice
    unacked: int  # stored, acknowledged to nobody
    mismatched: int  # stored with another vote id, item, annotator or choice than acknowledged
    undo_mismatches: int  # undone in the table but not by the client's account, or the other way round
    exactly_k: int
    over_k: int
    under_k: int
    undone: int
    skips: int
    resends: int
    reconnects: int
    recovered: int
    lost_undos: int
    errors: list[str]
    seconds: float
    latencies: list[float]

    @property
    def votes_per_s(self) -> float:
        return self.acked / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def problems(self) -> list[str]:
        found = [f"{label}: {count}" for label, count in (
            ("acknowledged votes not stored", self.lost), ("votes stored or counted twice", self.duplicates),
            ("stored votes nobody was told of", self.unacked), ("stored votes unlike their ack", self.mismatched),
            ("undos unlike the client's account", self.undo_mismatches),
            ("items with more than k live votes", self.over_k), ("client errors", len(self.errors))) if count]
        return found + self.errors[:10]


def audit(db: str | Path, tallies: dict[str, Tally], k: int, seconds: float) -> Audit:
    """Compares the votes table (read with sqlite3, server stopped) with what the clients were told."""
    acks = {sub: ack for tally in tallies.values() for sub, ack in tally.acks.items()}
    undone = set().union(*(tally.undone for tally in tallies.values())) if tallies else set()
    with sqlite3.connect(str(db)) as con:
        rows = con.execute("SELECT v.id, v.submission, v.item_id, a.name, v.answer, v.undone_at FROM votes v "
                           "JOIN annotators a ON a.id = v.annotator_id").fetchall()
        per_item = [count for _, count in con.execute(
            "SELECT i.id, COUNT(v.id) FROM items i LEFT JOIN votes v ON v.item_id = i.id AND v.undone_at IS NULL "
            "GROUP BY i.id")]
        doubled = con.execute("SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM votes WHERE undone_at "
                              "IS NULL GROUP BY item_id, annotator_id HAVING n > 1)").fetchone()[0]
    by_submission = {row[1]: row for row in rows}
    lost = sum(sub not in by_submission for sub in acks)
    unacked = sum(sub not in acks for sub in by_submission)
    mismatched = 0
    undo_mismatches = 0
    for sub, ack in acks.items():
        row = by_submission.get(sub)
        if row is None:
            continue
        stored_as = (row[0], row[2], row[3], json.loads(row[4]).get("choice"))
        if stored_as != (ack.vote, ack.item, ack.annotator, ack.choice):
            mismatched += 1
        if (row[5] is not None) != (sub in undone):
            undo_mismatches += 1
    vote_ids = [ack.vote for ack in acks.values()]
    counted_again = sum(len(tally.counted_again) for tally in tallies.values())
    duplicates = doubled + counted_again + (len(vote_ids) - len(set(vote_ids)))
    return Audit(
        annotators=len(tallies), items=len(per_item), k=k, acked=len(acks), stored=len(rows),
        live=sum(row[5] is None for row in rows), lost=lost, duplicates=duplicates, unacked=unacked,
        mismatched=mismatched, undo_mismatches=undo_mismatches, exactly_k=sum(c == k for c in per_item),
        over_k=sum(c > k for c in per_item), under_k=sum(c < k for c in per_item), undone=len(undone),
        skips=sum(t.skips for t in tallies.values()), resends=sum(t.resends for t in tallies.values()),
        reconnects=sum(t.reconnects for t in tallies.values()), recovered=sum(t.recovered for t in tallies.values()),
        lost_undos=sum(t.lost_undos for t in tallies.values()),
        errors=[f"{name}: {error}" for name, tally in tallies.items() for error in tally.errors + tally.counted_again],
        seconds=seconds, latencies=[s for tally in tallies.values() for s in tally.latencies])


def table(result: Audit, kill: Kill | None, start_seconds: float) -> str:
    def ms(value):
        return "-" if value is None else f"{value:.1f}"

    rows = [("annotators", result.annotators), ("items", result.items), ("k (annotators per item)", result.k),
            ("votes acknowledged", result.acked), ("votes stored (undone included)", result.stored),
            ("live votes", result.live), ("lost (acked, not stored)", result.lost), ("duplicates", result.duplicates),
            ("stored, never acknowledged", result.unacked), ("stored unlike the ack", result.mismatched),
            ("undo mismatches", result.undo_mismatches), ("items with exactly k live votes", result.exactly_k),
            ("items over k", result.over_k), ("items under k", result.under_k), ("undone", result.undone),
            ("skips", result.skips), ("same-submission resends", result.resends),
            ("requests retried after a connection error", result.reconnects),
            ("answers found already stored on retry", result.recovered),
            ("undos whose reply was lost", result.lost_undos),
            ("client errors", len(result.errors)), ("server start (s)", f"{start_seconds:.2f}")]
    if kill is not None:
        rows += [("SIGKILL at (s)", f"{kill.at_seconds:.2f}"),
                 ("votes acknowledged before the kill", kill.acked_before),
                 ("restart until serving (s)", f"{kill.restart_seconds:.2f}")]
    rows += [("run (s)", f"{result.seconds:.2f}"), ("throughput (votes/s)", f"{result.votes_per_s:.1f}"),
             ("POST /api/answer p50 (ms)", ms(result.percentile_ms(0.5))),
             ("POST /api/answer p95 (ms)", ms(result.percentile_ms(0.95)))]
    return "\n".join(["| metric | value |", "|---|---|"] + [f"| {label} | {value} |" for label, value in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200, help="pairwise items in the task file")
    parser.add_argument("--k", type=int, default=3, help="annotators per item")
    parser.add_argument("--annotators", type=int, default=20, help="annotators voting at once (one thread each)")
    parser.add_argument("--cap", type=int, default=200, help="answers standing per annotator before it stops")
    parser.add_argument("--seed", type=int, default=0, help="seeds each annotator's choices, resends, undos, skips")
    parser.add_argument("--retry-frac", type=float, default=0.1, help="answers sent again with the same submission id")
    parser.add_argument("--undo-frac", type=float, default=0.03, help="answers undone and given again")
    parser.add_argument("--skip-frac", type=float, default=0.02, help="items skipped")
    parser.add_argument("--kill-after", type=float, default=None, metavar="S",
                        help="SIGKILL the server S seconds into the run, restart it on the same file and port")
    parser.add_argument("--launch", choices=["cli", "function"], default="cli",
                        help="cli: `python -m alignkit.cli annotate serve`; function: the same serve function "
                             "without the CLI's imports (starts faster)")
    parser.add_argument("--workdir", help="keep the database, task file and server log here (default: a temp folder)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        db, tasks = folder / "votes.db", folder / "tasks.jsonl"
        if db.exists():
            sys.exit(f"{db} exists; the bench needs a fresh database")
        write_tasks(tasks, args.items)
        tokens = add_annotators(db, args.annotators)
        how = Behaviour(seed=args.seed, cap=args.cap, retry_frac=args.retry_frac, undo_frac=args.undo_frac,
                        skip_frac=args.skip_frac)
        with Server(db, tasks, args.k, folder / "server.log", cli=args.launch == "cli") as server:
            start_seconds = server.start()
            print(f"server up in {start_seconds:.1f} s at {server.base_url}; {args.annotators} annotators, "
                  f"{args.items} items, k={args.k}", flush=True)
            plan = KillPlan(after_seconds=args.kill_after) if args.kill_after is not None else None
            tallies, seconds, kill = run_load(server, tokens, how, plan)
            server.stop()
        result = audit(db, tallies, args.k, seconds)

    title = f"annotation load: {args.annotators} annotators, {args.items} pairwise items, k={args.k}"
    if args.kill_after is not None:
        title += f", SIGKILL after {args.kill_after:g} s and restart"
    print(f"\n{title}\n{table(result, kill, start_seconds)}")
    problems = result.problems()
    if args.kill_after is not None and kill is None:
        problems.append(f"the run ended before {args.kill_after:g} s: nothing was killed (use more --items)")
    if args.out:
        from alignkit.atomic_write import write_json_atomic

        write_json_atomic(args.out, {"args": vars(args), "audit": {**result.__dict__, "latencies": None},
                                     "kill": kill.__dict__ if kill else None, "problems": problems})
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print("OK: every acknowledged vote is stored once, no item has more than k live votes")


if __name__ == "__main__":
    main()
