"""From what an annotator clicked to what is stored: shown positions mapped back to the task file's order.

Each annotator sees an item's responses in their own random order (`shown_order`), fixed by the seed,
their name and the item, so a reload shows the same sides. Answers arrive in shown positions and are
stored in the task file's order ("canonical"), with the shown order beside them:

    pairwise  in: {"choice": "left" | "right" | "tie" | "both_bad", "reason"?: str}
              stored: {"choice": "1" | "2" | "tie" | "both_bad", "reason": str}   "1" = responses[0]
    ranking   in: {"ranking": [shown positions, best first]}
              stored: {"ranking": [response indices, best first]}
    rating    in: {"scores": [score per shown position]}
              stored: {"scores": [score per response]}
"""
from __future__ import annotations

import random
from typing import Any

from alignkit.annotation.tasks import TaskItem
from alignkit.stable_ids import stable_id

PAIRWISE_CHOICES = ("left", "right", "tie", "both_bad")
PAIR_LABELS = ("1", "2", "tie", "both_bad")  # stored choices: response 1 better, response 2 better, ...
MAX_REASON = 2000


class AnswerError(ValueError):
    """An answer that does not fit its item; the message says which field and why."""


def shown_order(seed: int, annotator: str, item_id: str, count: int) -> list[int]:
    """Response indices in the order this annotator sees them (left to right, or top to bottom)."""
    order = list(range(count))
    random.Random(stable_id("sides", seed, annotator, item_id)).shuffle(order)
    return order


def _positions(value: Any, count: int, field: str) -> list[int]:
    if not isinstance(value, list) or sorted(value) != list(range(count)) or any(isinstance(v, bool) for v in value):
        raise AnswerError(f"{field}: expected each of the {count} shown positions 0..{count - 1} once, got {value!r}")
    return value


def canonical_answer(item: TaskItem, shown: list[int], answer: Any) -> dict:
    """The stored answer for `answer` given in shown positions (see the module docstring)."""
    if not isinstance(answer, dict):
        raise AnswerError(f"answer: expected an object, got {type(answer).__name__}")
    if item.kind == "pairwise":
        choice = answer.get("choice")
        if choice not in PAIRWISE_CHOICES:
            raise AnswerError(f"choice: expected one of {', '.join(PAIRWISE_CHOICES)}, got {choice!r}")
        reason = answer.get("reason") or ""
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise AnswerError(f"reason: expected text of at most {MAX_REASON} characters")
        if choice in ("left", "right"):
            choice = str(shown[0 if choice == "left" else 1] + 1)
        return {"choice": choice, "reason": reason.strip()}
    if item.kind == "ranking":
        ranking = _positions(answer.get("ranking"), len(shown), "ranking")
        return {"ranking": [shown[position] for position in ranking]}
    scores = answer.get("scores")
    low, high = item.scale
    if (not isinstance(scores, list) or len(scores) != len(shown)
            or not all(isinstance(s, int) and not isinstance(s, bool) and low <= s <= high for s in scores)):
        raise AnswerError(f"scores: expected {len(shown)} whole numbers from {low} to {high}, got {scores!r}")
    stored = [0] * len(shown)
    for position, score in enumerate(scores):
        stored[shown[position]] = score
    return {"scores": stored}
