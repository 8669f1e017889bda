"""Agreement among the people who answered the same items, one entry per kind of task.

Each kind is measured on the unit people actually judged:
- pairwise: the choice ("1", "2", "tie", "both_bad") per item, nominal;
- ranking: each response's place (1 = best) per item, ordinal;
- rating: each response's score per item, interval.
Only live votes count (an undone answer is no answer). Judge-versus-human agreement is `alignkit
meta-eval` on the `gold` export; arena battles have one voter each and no agreement.
"""
from __future__ import annotations

from alignkit.annotation.agreement import agreement
from alignkit.annotation.store import Store

LEVELS = {"pairwise": "nominal", "ranking": "ordinal", "rating": "interval"}


def collected_labels(store: Store) -> dict[str, list[tuple[str, str, object]]]:
    """{kind: [(unit, annotator, label)]} from the live votes."""
    kinds = {item.id: item.kind for item in store.items()}
    labels: dict[str, list[tuple[str, str, object]]] = {kind: [] for kind in LEVELS}
    for vote in store.votes():
        kind = kinds[vote.item_id]
        if kind == "pairwise":
            labels[kind].append((vote.item_id, vote.annotator, vote.answer["choice"]))
        elif kind == "ranking":
            for place, index in enumerate(vote.answer["ranking"], start=1):
                labels[kind].append((f"{vote.item_id}#{index}", vote.annotator, place))
        else:
            for index, score in enumerate(vote.answer["scores"]):
                labels[kind].append((f"{vote.item_id}#{index}", vote.annotator, score))
    return {kind: rows for kind, rows in labels.items() if rows}


def agreement_results(store: Store) -> dict:
    """{"agreement": [report entries]}, one per kind of task that has votes."""
    entries = []
    for kind, labels in collected_labels(store).items():
        entries.append({"task": kind, **agreement(labels, LEVELS[kind]).to_dict()})
    return {"agreement": entries}
