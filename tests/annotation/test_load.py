"""The annotation server under load and under SIGKILL: no acknowledged vote lost, none stored twice.

A real server subprocess, 20 annotator threads over HTTP (bench/annotate_load.py, small sizes), then
the votes table read with sqlite3 and compared with every acknowledgement the clients got.
"""
import json
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import annotate_load as load  # noqa: E402

from alignkit.annotation.store import Store  # noqa: E402
from alignkit.annotation.tasks import read_tasks  # noqa: E402

ITEMS, K, ANNOTATORS = 60, 2, 20
# Fractions high enough that each behaviour happens in ~130 draws (none at all: below 1e-5).
HOW = load.Behaviour(seed=7, cap=ITEMS, retry_frac=0.1, undo_frac=0.1, skip_frac=0.1,
                     reconnect_timeout=90.0, deadline=90.0)


def setup(folder: Path) -> tuple[Path, Path, dict[str, str]]:
    db, tasks = folder / "votes.db", folder / "tasks.jsonl"
    load.write_tasks(tasks, ITEMS)
    return db, tasks, load.add_annotators(db, ANNOTATORS)


def assert_sound(result: load.Audit) -> None:
    assert result.problems() == []
    assert (result.lost, result.duplicates, result.unacked) == (0, 0, 0)
    assert (result.mismatched, result.undo_mismatches) == (0, 0)
    assert result.stored == result.acked and result.live == result.acked - result.undone
    # Everyone drained their queue (waiting out the others' skips), so every item got exactly k.
    assert (result.exactly_k, result.over_k, result.under_k) == (ITEMS, 0, 0)
    assert result.live == ITEMS * K


@pytest.mark.timeout(150)
def test_concurrent_annotators_lose_no_vote_and_store_none_twice(tmp_path):
    db, tasks, tokens = setup(tmp_path)
    # The real command, once: its imports cost seconds, so the kill test below starts the same function.
    with load.Server(db, tasks, K, tmp_path / "server.log", cli=True) as server:
        server.start()
        tallies, seconds, _ = load.run_load(server, tokens, HOW)
        server.stop()
    result = load.audit(db, tallies, K, seconds)
    assert_sound(result)
    # The run did exercise what it is meant to: resends of one submission, undos and skips.
    assert result.resends > 0 and result.undone > 0 and result.skips > 0
    assert result.reconnects == 0, "no connection should fail while the server stays up"
    assert sum(tally.recovered for tally in tallies.values()) == 0


@pytest.mark.timeout(150)
def test_sigkill_mid_run_then_restart_keeps_every_acknowledged_vote_once(tmp_path):
    db, tasks, tokens = setup(tmp_path)
    with load.Server(db, tasks, K, tmp_path / "server.log", cli=False) as server:
        server.start()
        first_pid = server.proc.pid
        tallies, seconds, kill = load.run_load(server, tokens, HOW, load.KillPlan(at_votes=ITEMS * K // 3))
        assert kill is not None, "the run ended before the kill"
        assert server.proc.pid != first_pid and server.proc.poll() is None  # the restarted one served the rest
        server.stop()
    result = load.audit(db, tallies, K, seconds)
    assert_sound(result)
    assert ITEMS * K // 3 <= kill.acked_before < result.acked, "votes must be acknowledged on both sides of the kill"
    # 20 clients wait on the server nearly all the time, so some request was in flight when it died.
    assert result.reconnects > 0


def test_the_audit_catches_a_lost_vote_a_duplicate_and_a_wrong_answer(tmp_path):
    # Without a server: votes written straight to the store and acks made up to match, then broken.
    db, _, tokens = setup(tmp_path)
    store = Store(db, k=K)
    loaded = read_tasks(str(tmp_path / "tasks.jsonl"))[:3]
    store.load_items(loaded)
    items = [item.id for item in loaded]
    names = sorted(tokens)[:2]
    tallies = {name: load.Tally() for name in names}
    for name in names:
        annotator = next(a for a in store.annotators() if a.name == name)
        for item in items:
            submission = f"{name}:{item}"
            vote, new = store.record_vote(annotator, item, {"choice": "1", "reason": ""}, [0, 1], submission)
            assert new
            tallies[name].acks[submission] = load.Ack(vote, item, name, "1")
    clean = load.audit(db, tallies, K, 1.0)
    assert clean.problems() == [] and (clean.acked, clean.stored, clean.exactly_k) == (6, 6, 3)

    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM votes WHERE submission = ?", (f"{names[0]}:{items[0]}",))
        con.execute("UPDATE votes SET answer = ? WHERE submission = ?",
                    (json.dumps({"choice": "2", "reason": ""}), f"{names[0]}:{items[1]}"))
        # A second live vote for one annotator and item, as a double-counted retry would leave.
        con.execute("DROP INDEX one_live_vote")
        con.execute("INSERT INTO votes (item_id, annotator_id, answer, shown_order, submission, created_at) "
                    "SELECT item_id, annotator_id, answer, shown_order, 'again', created_at FROM votes "
                    "WHERE submission = ?", (f"{names[1]}:{items[2]}",))
    broken = load.audit(db, tallies, K, 1.0)
    assert (broken.lost, broken.mismatched, broken.duplicates, broken.unacked, broken.over_k) == (1, 1, 1, 1, 1)
    assert len(broken.problems()) == 5
