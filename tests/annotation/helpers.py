"""Task files, stores and answering for the annotation tests."""
from __future__ import annotations

from alignkit.annotation.answers import canonical_answer, shown_order
from alignkit.annotation.store import Annotator, Store
from alignkit.annotation.tasks import read_tasks
from tests.helpers.files import write_jsonl

RUBRIC = ["useless", "poor", "acceptable", "good", "excellent"]


def pairwise_record(index: int, first: str = "m1", second: str = "m2") -> dict:
    return {"id": f"p{index}", "prompt": f"question {index}",
            "responses": [{"content": f"answer {index}, the first", "model": first},
                          {"content": f"answer {index}, the second", "model": second}]}


def task_file(path, *, pairwise: int = 3, ranking: int = 1, rating: int = 1) -> str:
    records = [pairwise_record(i) for i in range(pairwise)]
    records += [{"id": f"r{i}", "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                           {"role": "user", "content": f"rank {i}"}],
                 "responses": [{"content": f"rank {i} response {n}", "model": m} for n, m in enumerate(("m1", "m2", "m3"))]}
                for i in range(ranking)]
    records += [{"id": f"t{i}", "prompt": f"rate {i}", "responses": [f"rated {i}"], "rubric": RUBRIC}
                for i in range(rating)]
    write_jsonl(path, records)
    return str(path)


def make_store(tmp_path, k: int = 2, names=("alice", "bob"), **task_kwargs) -> tuple[Store, dict[str, Annotator],
                                                                                       dict[str, str]]:
    store = Store(tmp_path / "votes.db", k=k)
    store.load_items(read_tasks(task_file(tmp_path / "tasks.jsonl", **task_kwargs)))
    tokens = {name: store.add_annotator(name, admin=name == "alice") for name in names}
    people = {name: store.annotator_for(token) for name, token in tokens.items()}
    return store, people, tokens


def answer_as(store: Store, who: Annotator, item_id: str, canonical: dict, submission: str | None = None) -> int:
    """Stores an answer given in task-file terms ("1" = the first response) by turning it into what the
    annotator would have clicked in their own shown order."""
    item = store.item(item_id)
    shown = shown_order(store.seed, who.name, item_id, len(item.responses))
    if item.kind == "pairwise":
        choice = canonical["choice"]
        if choice in ("1", "2"):
            choice = "left" if shown[0] == int(choice) - 1 else "right"
        raw = {"choice": choice, "reason": canonical.get("reason", "")}
    elif item.kind == "ranking":
        raw = {"ranking": [shown.index(index) for index in canonical["ranking"]]}
    else:
        raw = {"scores": [canonical["scores"][index] for index in shown]}
    stored = canonical_answer(item, shown, raw)
    assert stored == {**canonical, **({"reason": canonical.get("reason", "")} if item.kind == "pairwise" else {})}
    vote_id, _ = store.record_vote(who, item_id, stored, shown, submission or f"{who.name}-{item_id}")
    return vote_id
