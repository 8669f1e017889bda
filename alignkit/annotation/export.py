"""From stored votes to the files the rest of alignkit reads.

    pairs      TRL conversational prompt/chosen/rejected, for `alignkit pref` and `alignkit rm`
    rankings   {prompt, responses, rewards}: ranking and rating items, for preference loaders (any pair rule)
    battles    {model_a, model_b, winner}, for `alignkit leaderboard`: pairwise and ranking items whose
               responses name their models, and every arena vote
    votes      every vote as given, undone ones included: annotator, time, shown order, answer
    gold       LLMBar pairs {input, output_1, output_2, label}, for `alignkit meta-eval` with people as gold

Votes are combined per item by `aggregate`:
- "majority": one label per item. A pairwise item takes the most common choice, and none when two
  choices are equally common (counted as "no majority"). Ranking items score each response by its mean
  Borda points (n-1 for first place ... 0 for last), rating items by their mean score.
- "each": every vote on its own, so an item answered by k people gives k records.

Ties and "both bad" need a decision, never a silent one (`ties`, `both_bad`): "drop" leaves them out and
counts them, "error" stops at the first; `both_bad="tie"` treats "both bad" as a tie (Chatbot Arena's
reading for the leaderboard). A pairwise tie never becomes a pair: DPO has no way to learn "equal".
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from alignkit.annotation.store import Battle, Store, Vote
from alignkit.annotation.tasks import TaskItem
from alignkit.data.errors import DataError
from alignkit.data.preference import Ranking, ranking_to_pairs

EXPORTS = ("pairs", "rankings", "battles", "votes", "gold")
AGGREGATES = ("majority", "each")
TIE_POLICIES = ("drop", "error")
BOTH_BAD_POLICIES = ("drop", "tie", "error")


@dataclass
class ExportPolicy:
    aggregate: str = "majority"
    ties: str = "drop"
    both_bad: str = "drop"
    pair_rule: str = "all_pairs"  # how ranking and rating items become pairs (data.preference.PAIR_RULES)
    threshold: float = 0.0  # for pair_rule="margin"

    def __post_init__(self) -> None:
        for name, value, allowed in (("aggregate", self.aggregate, AGGREGATES), ("ties", self.ties, TIE_POLICIES),
                                     ("both_bad", self.both_bad, BOTH_BAD_POLICIES)):
            if value not in allowed:
                raise DataError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")


@dataclass
class Export:
    rows: list[dict]
    counts: Counter = field(default_factory=Counter)  # what was kept and left out, and why


def _votes_by_item(store: Store) -> tuple[list[TaskItem], dict[str, list[Vote]]]:
    by_item: dict[str, list[Vote]] = {}
    for vote in store.votes():
        by_item.setdefault(vote.item_id, []).append(vote)
    return store.items(), by_item


def _both_bad(label: str, policy: ExportPolicy, where: str, counts: Counter) -> str | None:
    """A "both bad" label after its policy: left out (None), read as a tie, or an error."""
    if label != "both_bad":
        return label
    if policy.both_bad == "error":
        raise DataError(f"{where}: answered 'both bad' (choose both_bad=drop or tie)")
    if policy.both_bad == "drop":
        counts["both bad, dropped"] += 1
        return None
    return "tie"


def _pair_label(label: str, policy: ExportPolicy, where: str, counts: Counter) -> str | None:
    """The label after the tie and both-bad policies; None when it is left out."""
    label = _both_bad(label, policy, where, counts)
    if label == "tie":
        if policy.ties == "error":
            raise DataError(f"{where}: answered 'tie' (choose ties=drop)")
        counts["tie, dropped"] += 1
        return None
    return label


def majority(labels: Iterable[str]) -> str | None:
    """The most common label, or None when two labels are equally common."""
    ranked = Counter(labels).most_common()
    if not ranked or len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def _choices(votes: list[Vote], policy: ExportPolicy, counts: Counter) -> list[str]:
    """A pairwise item's choices to export: one per vote, or its majority (none when the vote is split)."""
    choices = [vote.answer["choice"] for vote in votes]
    if policy.aggregate == "majority":
        label = majority(choices)
        if label is None:
            counts["no majority"] += 1
            return []
        choices = [label]
    return choices


def _pairwise_labels(item: TaskItem, votes: list[Vote], policy: ExportPolicy, counts: Counter) -> list[str]:
    """The item's labels to export after the tie and both-bad policies."""
    labels = (_pair_label(c, policy, f"item {item.id}", counts) for c in _choices(votes, policy, counts))
    return [label for label in labels if label]


def _item_scores(item: TaskItem, votes: list[Vote], policy: ExportPolicy) -> list[list[float]]:
    """Per-response scores from ranking or rating votes: one list per vote, or their mean."""
    if item.kind == "ranking":
        count = len(item.responses)
        per_vote = []
        for vote in votes:
            points = [0.0] * count
            for place, index in enumerate(vote.answer["ranking"]):
                points[index] = float(count - 1 - place)
            per_vote.append(points)
    else:
        per_vote = [[float(s) for s in vote.answer["scores"]] for vote in votes]
    if policy.aggregate == "majority":
        return [[sum(column) / len(column) for column in zip(*per_vote)]]
    return per_vote


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def export_pairs(store: Store, policy: ExportPolicy = ExportPolicy()) -> Export:
    items, by_item = _votes_by_item(store)
    out = Export([])
    for item in items:
        votes = by_item.get(item.id, [])
        if not votes:
            continue
        if item.kind == "pairwise":
            for label in _pairwise_labels(item, votes, policy, out.counts):
                chosen, rejected = (0, 1) if label == "1" else (1, 0)
                out.rows.append({"id": item.id, "prompt": item.prompt,
                                 "chosen": _assistant(item.responses[chosen].content),
                                 "rejected": _assistant(item.responses[rejected].content), "votes": len(votes)})
                out.counts["pairs"] += 1
            continue
        if len(item.responses) < 2:
            out.counts["single-response rating, no pair"] += 1
            continue
        for scores in _item_scores(item, votes, policy):
            ranking = Ranking(item.prompt, [_assistant(r.content) for r in item.responses], scores)
            for pair in ranking_to_pairs(ranking, policy.pair_rule, threshold=policy.threshold):
                out.rows.append({"id": item.id, "prompt": pair.prompt, "chosen": pair.chosen,
                                 "rejected": pair.rejected, "margin": pair.margin, "votes": len(votes)})
                out.counts["pairs"] += 1
    return out


def export_rankings(store: Store, policy: ExportPolicy = ExportPolicy()) -> Export:
    items, by_item = _votes_by_item(store)
    out = Export([])
    for item in items:
        votes = by_item.get(item.id, [])
        if item.kind == "pairwise" or not votes:
            continue
        for scores in _item_scores(item, votes, policy):
            out.rows.append({"id": item.id, "kind": item.kind, "prompt": item.prompt,
                             "responses": [r.content for r in item.responses], "rewards": scores,
                             "models": [r.model for r in item.responses], "votes": len(votes)})
            out.counts[f"{item.kind} records"] += 1
    return out


def export_battles(store: Store, policy: ExportPolicy = ExportPolicy()) -> Export:
    """Battles for the leaderboard. Ties stay ties here: Bradley-Terry counts a tie as half a win each."""
    items, by_item = _votes_by_item(store)
    out = Export([])
    for item in items:
        votes = by_item.get(item.id, [])
        models = [r.model for r in item.responses]
        if not votes or item.kind == "rating":
            continue
        if not all(models):
            out.counts["items without model names"] += 1
            continue
        if item.kind == "pairwise":
            for choice in _choices(votes, policy, out.counts):
                winner = _both_bad({"1": "a", "2": "b"}.get(choice, choice), policy, f"item {item.id}", out.counts)
                if winner:
                    out.rows.append({"model_a": models[0], "model_b": models[1], "winner": winner, "item": item.id,
                                     "source": "tasks"})
            continue
        for scores in _item_scores(item, votes, policy):
            for i in range(len(models)):
                for j in range(i + 1, len(models)):
                    winner = "a" if scores[i] > scores[j] else "b" if scores[i] < scores[j] else "tie"
                    out.rows.append({"model_a": models[i], "model_b": models[j], "winner": winner, "item": item.id,
                                     "source": "tasks"})
    for battle in store.battles():
        if battle.winner is None:
            out.counts["arena battles without a vote"] += 1
            continue
        winner = _both_bad(battle.winner, policy, f"arena battle {battle.id}", out.counts)
        if winner:
            out.rows.append({"model_a": battle.model_a, "model_b": battle.model_b, "winner": winner,
                             "battle": battle.id, "source": "arena"})
    out.counts["battles"] = len(out.rows)
    return out


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _arena_row(battle: Battle) -> dict:
    return {"kind": "arena", "battle": battle.id, "annotator": battle.annotator, "time": _iso(battle.voted_at),
            "prompt": battle.prompt, "shown_order": ["model_a", "model_b"], "model_a": battle.model_a,
            "model_b": battle.model_b, "response_a": battle.response_a, "response_b": battle.response_b,
            "winner": battle.winner}


def export_votes(store: Store) -> Export:
    """Every vote as given, undone ones included (with when they were undone), then every arena vote."""
    kinds = {item.id: item.kind for item in store.items()}
    out = Export([])
    for vote in store.votes(include_undone=True):
        out.rows.append({"vote": vote.id, "item": vote.item_id, "kind": kinds[vote.item_id],
                         "annotator": vote.annotator, "time": _iso(vote.created_at), "timestamp": vote.created_at,
                         "seconds": vote.seconds, "shown_order": vote.shown_order, "answer": vote.answer,
                         "undone_at": _iso(vote.undone_at)})
        out.counts["undone votes" if vote.undone_at else "votes"] += 1
    for battle in store.battles():
        if battle.winner is not None:
            out.rows.append(_arena_row(battle))
            out.counts["arena votes"] += 1
    return out


def export_gold(store: Store, policy: ExportPolicy = ExportPolicy()) -> Export:
    """Pairwise items with a human majority for one response, as LLMBar pairs (label 1 or 2)."""
    items, by_item = _votes_by_item(store)
    out = Export([])
    for item in items:
        votes = by_item.get(item.id, [])
        if item.kind != "pairwise" or not votes:
            continue
        label = majority(vote.answer["choice"] for vote in votes)
        if label is None:
            out.counts["no majority"] += 1
            continue
        if _pair_label(label, policy, f"item {item.id}", out.counts) is None:
            continue
        earlier = item.prompt[:-1]
        text = item.prompt[-1]["content"]
        if earlier:
            # LLMBar inputs are one text: earlier turns go before the last one, marked by role.
            text = "\n\n".join(f"{t['role']}: {t['content']}" for t in item.prompt)
        out.rows.append({"id": item.id, "input": text, "output_1": item.responses[0].content,
                         "output_2": item.responses[1].content, "label": int(label), "votes": len(votes)})
        out.counts["gold pairs"] += 1
    return out


def export(store: Store, what: str, policy: ExportPolicy = ExportPolicy()) -> Export:
    if what not in EXPORTS:
        raise DataError(f"unknown export {what!r}; expected one of {', '.join(EXPORTS)}")
    if what == "votes":
        return export_votes(store)
    return {"pairs": export_pairs, "rankings": export_rankings, "battles": export_battles,
            "gold": export_gold}[what](store, policy)
