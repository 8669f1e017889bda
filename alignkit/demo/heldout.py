"""The demo's held-out prompts and the check that scores answers to them.

Each held-out row asks for an answer in one format (a JSON object, capital letters, or a fixed
closing phrase), so whether a response follows it is a fact, not an impression. Both the demo run
and its evaluation stage score with `score`, so the two report the same figure; the check itself,
`follows_format`, lives in alignkit.rewards so that the `format` reward trains on the same fact.
"""
from __future__ import annotations

import json
from pathlib import Path

from alignkit.rewards.formats import follows_format

DEMO_DATA = Path(__file__).parent / "data"


def load_heldout(limit: int = 0) -> list[dict]:
    rows = [json.loads(line) for line in open(DEMO_DATA / "heldout.jsonl")]
    return rows[:limit] if limit else rows


def score(rows: list[dict], responses: list[str]) -> dict:
    per_format: dict[str, list[int]] = {}
    correct = 0
    for row, resp in zip(rows, responses):
        per_format.setdefault(row["format"], []).append(int(follows_format(row["format"], resp)))
        correct += int(row["answer"].lower() in resp.lower())
    followed = sum(sum(v) for v in per_format.values())
    return {"n": len(rows), "format_following": followed / len(rows),
            "per_format": {k: sum(v) / len(v) for k, v in sorted(per_format.items())},
            "answer_mentioned": correct / len(rows)}
