"""AlpacaEval annotations (`annotations.json`, a JSON list) as meta-eval predictions and leaderboard battles.

Each record is one judgment: `{"instruction", "output_1", "output_2", "generator_1", "generator_2",
"annotator", "preference", ...}`. `preference` is AlpacaEval's number: 1 when output_1 wins, 2 when
output_2 wins, 1.5 (or the older 0) for a draw, and for weighted annotators anything between 1 and 2 (the
judge's probability that output_2 is better, plus 1). Null or NaN means the annotator gave no verdict: a
failure here, where AlpacaEval drops it from its win rate.

A preference becomes a verdict the way AlpacaEval's own discrete win rate reads it: below 1.5 output_1,
above 1.5 output_2, exactly 1.5 (or 0) a tie. AlpacaEval shuffles which output the judge sees first and
stores the annotation in the records' order; the shown order is not kept, so each record is one verdict,
scored as order ab.

As predictions, records are matched by content (instruction, output_1, output_2) to the loaded pairs, the
outputs either way round (the verdict then swapped); records about no loaded pair (an annotations file
covers a whole benchmark) are skipped and counted. As battles: generator_1 against generator_2.
"""
from __future__ import annotations

import os
from typing import Sequence

from alignkit.data.errors import DataError, RecordError, describe_type
from alignkit.data.readers import located_records
from alignkit.evaluation.importers.matching import (
    ImportedBattles, ImportedPredictions, content_index, flipped, number_or_none,
)
from alignkit.evaluation.leaderboard import Battle
from alignkit.evaluation.meta_eval import LabelledPair, Prediction

_BATTLE_WINNER = {1: "a", 2: "b", "tie": "tie"}


def preference_verdict(preference: float | None) -> int | str | None:
    """AlpacaEval's preference as a verdict: 1, 2, "tie", or None (no verdict)."""
    if preference is None:
        return None
    if preference in (0.0, 1.5):
        return "tie"
    return 1 if preference < 1.5 else 2


def _preference(record: dict, at: dict) -> float | None:
    try:
        value = number_or_none(record.get("preference"))
    except TypeError as error:
        raise RecordError("preference", str(error), **at) from None
    if value is not None and value != 0.0 and not 1.0 <= value <= 2.0:
        raise RecordError("preference", f"must be between 1 and 2 (or 0 for a draw, null for none), got {value!r}",
                          **at)
    return value


def _texts(record: dict, at: dict) -> tuple[str, str, str]:
    for field in ("instruction", "output_1", "output_2"):
        if not isinstance(record.get(field), str):
            raise RecordError(field, f"must be a string, got {describe_type(record.get(field))}", **at)
    return record["instruction"], record["output_1"], record["output_2"]


def annotation_predictions(path: str | os.PathLike, pairs: Sequence[LabelledPair]) -> ImportedPredictions:
    index = content_index(pairs)
    predictions, records, unmatched = [], 0, 0
    for at, record in located_records(path):
        records += 1
        instruction, output_1, output_2 = _texts(record, at)
        verdict = preference_verdict(_preference(record, at))
        where = f"{at['path']}:{at['line']}"
        same = index.get((instruction, output_1, output_2), [])
        swapped = index.get((instruction, output_2, output_1), [])
        unmatched += not (same or swapped)
        predictions.extend(Prediction(pair.id, "ab", verdict, where) for pair in same)
        predictions.extend(Prediction(pair.id, "ab", flipped(verdict), where) for pair in swapped)
    if records and unmatched == records:
        raise DataError(f"{path}: none of its {records} annotations has the instruction and outputs of a loaded pair")
    return ImportedPredictions(predictions, records, unmatched)


def annotation_battles(path: str | os.PathLike) -> ImportedBattles:
    battles, records, failed = [], 0, 0
    for at, record in located_records(path):
        records += 1
        generators = []
        for field in ("generator_1", "generator_2"):
            if not isinstance(record.get(field), str) or not record[field]:
                raise RecordError(field, f"must name the model that wrote {field.replace('generator', 'output')}, "
                                         f"got {describe_type(record.get(field))}", **at)
            generators.append(record[field])
        if generators[0] == generators[1]:
            raise RecordError("generator_2", f"names the same model as generator_1 ({generators[0]!r})", **at)
        verdict = preference_verdict(_preference(record, at))
        if verdict is None:
            failed += 1
        else:
            battles.append(Battle(generators[0], generators[1], _BATTLE_WINNER[verdict]))
    return ImportedBattles(battles, records, failed)
