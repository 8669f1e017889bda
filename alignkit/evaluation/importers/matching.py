"""What the importers share: finding the loaded pairs a judgment is about, and what an import gave."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from alignkit.data.errors import describe_type
from alignkit.evaluation.meta_eval import LabelledPair, Prediction


@dataclass
class ImportedPredictions:
    predictions: list[Prediction]
    records: int  # judgment records read
    # Records about no loaded pair. Formats that cover more than a gold set (every model pair of a
    # benchmark, of which people judged a few) are skipped and counted; none matching at all is an error.
    unmatched: int = 0


@dataclass
class ImportedBattles:
    battles: list  # leaderboard.Battle
    records: int
    failed: int = 0  # judgments without a verdict (unparseable, an error): counted, never a battle
    notes: list[str] = field(default_factory=list)


def content_index(pairs: Sequence[LabelledPair]) -> dict[tuple, list[LabelledPair]]:
    """(input, output_1, output_2) -> the loaded pairs with that content."""
    index: dict[tuple, list[LabelledPair]] = {}
    for pair in pairs:
        index.setdefault((pair.input, pair.output_1, pair.output_2), []).append(pair)
    return index


def flipped(verdict):
    """A verdict about (output_1, output_2) restated for the pair with the outputs the other way round."""
    return {1: 2, 2: 1}.get(verdict, verdict)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_or_none(value: object) -> float | None:
    """A JSON number, or None for null and NaN (pandas writes a missing preference as NaN)."""
    if value is None or (is_number(value) and math.isnan(value)):
        return None
    if not is_number(value):
        raise TypeError(f"must be a number or null, got {describe_type(value)}")
    return float(value)
