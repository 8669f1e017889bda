import sqlite3
import threading

import pytest

from alignkit.annotation.store import Store, StoreError
from alignkit.annotation.tasks import read_tasks
from alignkit.data.errors import DataError
from tests.annotation.helpers import answer_as, make_store, task_file
from tests.helpers.files import write_jsonl


def drain(store, who, answer=lambda item: {"choice": "1"}):
    """Answers everything in `who`'s queue; returns the item ids in the order they came."""
    seen = []
    while (item_id := store.next_item(who)) is not None:
        seen.append(item_id)
        answer_as(store, who, item_id, answer(store.item(item_id)))
    return seen


def test_each_item_goes_to_k_annotators_and_no_further(tmp_path):
    store, people, _ = make_store(tmp_path, k=2, names=("alice", "bob", "carol"), ranking=0, rating=0)
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    assert drain(store, alice) == ["p0", "p1", "p2"]
    assert drain(store, bob) == ["p0", "p1", "p2"]
    assert store.next_item(carol) is None
    assert store.progress(carol) == {"done": 0, "skipped": 0, "todo": 0, "total": 0}
    assert store.overview()["complete"] == 3


def test_claims_hold_slots_while_open(tmp_path):
    store, people, _ = make_store(tmp_path, k=1, names=("alice", "bob"), ranking=0, rating=0)
    assert store.next_item(people["alice"]) == "p0"
    assert store.next_item(people["alice"]) == "p0"  # the same item again until answered
    assert store.next_item(people["bob"]) == "p1"  # alice's open claim holds p0's only slot


def test_an_expired_claim_frees_its_slot_and_its_late_vote_still_counts(tmp_path):
    store, people, _ = make_store(tmp_path, k=1, names=("alice", "bob"), ranking=0, rating=0)
    store.claim_ttl = -1.0  # every open claim is already past its time
    assert store.next_item(people["alice"]) == "p0"
    assert store.next_item(people["bob"]) == "p0"
    answer_as(store, people["bob"], "p0", {"choice": "2"})
    # alice's claim is let go once the item is full, but an answer she sends is kept, never lost.
    assert store.next_item(people["alice"]) == "p1"
    answer_as(store, people["alice"], "p0", {"choice": "1"})
    assert sorted(v.annotator for v in store.votes() if v.item_id == "p0") == ["alice", "bob"]


def test_skip_gives_the_slot_to_someone_else(tmp_path):
    store, people, _ = make_store(tmp_path, k=1, names=("alice", "bob"), pairwise=2, ranking=0, rating=0)
    assert store.next_item(people["alice"]) == "p0"
    store.skip(people["alice"], "p0")
    assert store.next_item(people["alice"]) == "p1"
    assert store.next_item(people["bob"]) == "p0"
    assert store.progress(people["alice"])["skipped"] == 1


def test_undo_reopens_the_last_answer_first(tmp_path):
    store, people, _ = make_store(tmp_path, k=1, names=("alice",), ranking=0, rating=0)
    alice = people["alice"]
    answer_as(store, alice, store.next_item(alice), {"choice": "1"})
    answer_as(store, alice, store.next_item(alice), {"choice": "2"})
    assert store.next_item(alice) == "p2"  # p2 is now claimed and open
    assert store.undo(alice) == "p1"
    assert store.next_item(alice) == "p1"
    answer_as(store, alice, "p1", {"choice": "tie"}, submission="second try")
    live = {v.item_id: v.answer["choice"] for v in store.votes()}
    assert live == {"p0": "1", "p1": "tie"}
    undone = [v for v in store.votes(include_undone=True) if v.undone_at is not None]
    assert [(v.item_id, v.answer["choice"]) for v in undone] == [("p1", "2")]
    assert store.progress(alice) == {"done": 2, "skipped": 0, "todo": 1, "total": 3}


def test_a_submission_is_stored_once_and_an_item_answered_once(tmp_path):
    store, people, _ = make_store(tmp_path, k=2, ranking=0, rating=0)
    alice = people["alice"]
    first = answer_as(store, alice, "p0", {"choice": "1"}, submission="s1")
    again, new = store.record_vote(alice, "p0", {"choice": "1", "reason": ""}, [0, 1], "s1")
    assert (again, new) == (first, False)
    with pytest.raises(StoreError, match="already answered"):
        store.record_vote(alice, "p0", {"choice": "2", "reason": ""}, [0, 1], "s2")
    with pytest.raises(StoreError, match="another answer"):
        store.record_vote(people["bob"], "p0", {"choice": "2", "reason": ""}, [0, 1], "s1")
    with pytest.raises(StoreError, match="no item"):
        store.record_vote(alice, "nope", {"choice": "2", "reason": ""}, [0, 1], "s3")
    assert len(store.votes()) == 1


def test_tokens_are_stored_hashed_and_replaceable(tmp_path):
    store = Store(tmp_path / "v.db")
    token = store.add_annotator("alice")
    assert store.annotator_for(token).name == "alice" and store.annotator_for("wrong") is None
    with pytest.raises(DataError, match="already exists"):
        store.add_annotator("alice")
    new = store.add_annotator("alice", new_token=True)
    assert store.annotator_for(token) is None and store.annotator_for(new).name == "alice"
    stored = sqlite3.connect(tmp_path / "v.db").execute("SELECT token_hash FROM annotators").fetchone()[0]
    assert token not in stored and new not in stored


def test_settings_persist_and_wal_is_on(tmp_path):
    first = Store(tmp_path / "v.db", k=3)
    again = Store(tmp_path / "v.db")
    assert (again.k, again.seed, again.secret) == (3, first.seed, first.secret)
    mode = sqlite3.connect(tmp_path / "v.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_a_changed_item_under_a_stored_id_is_refused(tmp_path):
    store = Store(tmp_path / "v.db")
    assert store.load_items(read_tasks(task_file(tmp_path / "t.jsonl"))) == 5
    assert store.load_items(read_tasks(task_file(tmp_path / "t.jsonl"))) == 0
    changed = write_jsonl(tmp_path / "c.jsonl", [{"id": "p0", "prompt": "other", "responses": ["a", "b"]}])
    with pytest.raises(DataError, match="p0.*other content"):
        store.load_items(read_tasks(changed))


def test_concurrent_annotators_never_overfill_an_item(tmp_path):
    store, people, _ = make_store(tmp_path, k=2, names=tuple(f"a{i}" for i in range(8)), pairwise=12,
                                  ranking=0, rating=0)
    errors = []

    def work(who):
        try:
            drain(store, who)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(who,)) for who in people.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    per_item = {}
    for vote in store.votes():
        per_item[vote.item_id] = per_item.get(vote.item_id, 0) + 1
    assert per_item == {f"p{i}": 2 for i in range(12)}


def test_battles_belong_to_their_annotator_and_take_one_vote(tmp_path):
    store, people, _ = make_store(tmp_path, ranking=0, rating=0)
    battle = store.add_battle(people["alice"], "q", "m1", "m2", "one", "two")
    with pytest.raises(StoreError):
        store.battle(battle, people["bob"])
    with pytest.raises(StoreError):
        store.vote_battle(people["bob"], battle, "a", "x")
    with pytest.raises(StoreError, match="winner"):
        store.vote_battle(people["alice"], battle, "left", "x")
    assert store.vote_battle(people["alice"], battle, "b", "x") is True
    assert store.vote_battle(people["alice"], battle, "b", "x") is False  # the same request again
    with pytest.raises(StoreError, match="already has a vote"):
        store.vote_battle(people["alice"], battle, "a", "y")
    assert store.battle(battle).winner == "b"
