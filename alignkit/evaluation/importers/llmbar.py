"""LLMBar evaluator outputs as meta-eval predictions.

LLMBar's `LLMEvaluator/evaluate.py` writes `<subset>/evaluators/<model>/<method>/result.json`: the
subset's `dataset.json` records, in their order, each with a "results" list. Only the last entry of that
list is the evaluator's decision (swap-and-synthesize evaluators append a synthesized round after the
first). It holds "swap = False" (output_1 shown first: order ab) and "swap = True" (order ba), each with
a "winner": "1" or "2" (LLMBar has already mapped it back to the underlying output) or null (the reply
matched none of the evaluator's patterns: a failure, as alignkit counts unparseable replies).

Records are matched to the loaded pairs by position when the subset's `dataset.json` (the folder above
`evaluators/`) is one of the loaded pairs files, and then must carry the same input, outputs and label;
otherwise by content (input, output_1, output_2), which must then name exactly one loaded pair. A record
that matches nothing stops the run, naming it: an LLMBar file and its dataset belong together.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from alignkit.data.errors import RecordError, describe_type
from alignkit.data.readers import located_records
from alignkit.evaluation.importers.matching import content_index
from alignkit.evaluation.meta_eval import LabelledPair, Prediction

_LLMBAR_ORDERS = (("swap = False", "ab"), ("swap = True", "ba"))
_LLMBAR_WINNERS = {"1": 1, "2": 2, None: None}


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _llmbar_verdicts(record: dict, at: dict) -> dict[str, int | None]:
    results = record.get("results")
    if not isinstance(results, list) or not results:
        raise RecordError("results", f"must be a non-empty list, got {describe_type(results)}", **at)
    last = f"results[{len(results) - 1}]"
    if not isinstance(results[-1], dict):
        raise RecordError(last, f"must be an object, got {describe_type(results[-1])}", **at)
    verdicts = {}
    for key, order in _LLMBAR_ORDERS:
        entry = results[-1].get(key)
        if not isinstance(entry, dict) or "winner" not in entry:
            raise RecordError(f"{last}[{key!r}]", "must be an object with a 'winner'", **at)
        winner = entry["winner"]
        if not (winner is None or (isinstance(winner, str) and winner in _LLMBAR_WINNERS)):
            raise RecordError(f"{last}[{key!r}].winner", f'must be "1", "2" or null, got {winner!r}', **at)
        verdicts[order] = _LLMBAR_WINNERS[winner]
    return verdicts


def read_llmbar_results(path: str | os.PathLike, pairs: Sequence[LabelledPair]) -> list[Prediction]:
    """An LLMBar evaluator's result.json as predictions for `pairs` (see the module doc)."""
    path = Path(path)
    dataset = path.parent.parent.parent.parent / "dataset.json" if path.parent.parent.parent.name == "evaluators" \
        else None
    by_index = {}
    if dataset is not None:
        by_index = {pair.index: pair for pair in pairs if pair.file and _same_file(pair.file, dataset)}
    by_content = content_index(pairs)
    predictions = []
    for at, record in located_records(path):
        index = at["line"] - 1
        verdicts = _llmbar_verdicts(record, at)
        if by_index:
            pair = by_index.get(index)
            if pair is None:
                raise RecordError("", f"{dataset} has only {len(by_index)} pairs; this result.json has more", **at)
            for key in ("input", "output_1", "output_2", "label"):
                if record.get(key) != getattr(pair, key):
                    raise RecordError(key, f"differs from {pair.file}:record {pair.index + 1}; is this result.json "
                                           "from another version of the dataset?", **at)
        else:
            matches = by_content.get(tuple(record.get(key) for key in ("input", "output_1", "output_2")), [])
            if len(matches) != 1:
                problem = "no loaded pair has" if not matches else f"{len(matches)} loaded pairs have"
                raise RecordError("input", f"{problem} this input and these outputs; load the subset's dataset.json "
                                           "with --pairs (it is then matched by position)", **at)
            pair = matches[0]
            if "label" in record and record["label"] != pair.label:
                raise RecordError("label", f"is {record['label']!r} but the pair's label is {pair.label!r} "
                                           f"({pair.file}:record {pair.index + 1})", **at)
        where = f"{at['path']}:record {at['line']}"
        predictions.extend(Prediction(pair.id, order, verdict, where) for order, verdict in verdicts.items())
    return predictions
