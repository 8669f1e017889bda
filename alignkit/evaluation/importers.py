"""Other tools' judge outputs, read as alignkit's meta-eval predictions (`meta_eval.Prediction`).

`load_predictions_file(path, pairs)` reads any supported format into the predictions that
`meta_eval.load_predictions` gives for alignkit's own files, so `meta-eval --predictions` scores
them the same way. The format is given (`format=`) or detected from the fields of the file's first
record:

* "alignkit": predictions JSONL `{"id", "order"?, "verdict"}` (`meta_eval.load_predictions`).
* "llmbar": an LLMBar evaluator's output, `<subset>/evaluators/<model>/<method>/result.json` as
  LLMBar's `LLMEvaluator/evaluate.py` writes it: the subset's `dataset.json` records, in their
  order, each with a "results" list. Only the last entry of that list is the evaluator's decision
  (swap-and-synthesize evaluators append a synthesized round after the first). It holds
  "swap = False" (output_1 shown first: order ab) and "swap = True" (order ba), each with a
  "winner": "1" or "2" (LLMBar has already mapped it back to the underlying output) or null (the
  reply matched none of the evaluator's patterns: a failure, as alignkit counts unparseable replies).
  Records are matched to the loaded pairs by position when the subset's `dataset.json` (the folder
  above `evaluators/`) is one of the loaded pairs files, and then must carry the same input,
  outputs and label; otherwise by content (input, output_1, output_2), which must then name
  exactly one loaded pair. A record that matches nothing stops the run, naming it.

A judge's default name: the file stem for alignkit files; "<model>/<method>" for an LLMBar
result.json under `evaluators/` (so the Natural and Neighbor files of one evaluator are one judge).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from alignkit.data.errors import DataError, RecordError, describe_type
from alignkit.data.readers import located_records
from alignkit.evaluation.meta_eval import LabelledPair, Prediction, load_predictions

FORMATS = ("alignkit", "llmbar")
_LLMBAR_ORDERS = (("swap = False", "ab"), ("swap = True", "ba"))
_LLMBAR_WINNERS = {"1": 1, "2": 2, None: None}


def detect_format(path: str | os.PathLike) -> str:
    """The predictions format of `path`, from the fields of its first record."""
    for at, record in located_records(path):
        if "verdict" in record and "id" in record:
            return "alignkit"
        if "results" in record and "output_1" in record:
            return "llmbar"
        raise RecordError("", f"cannot tell the predictions format from the fields {sorted(record)[:8]}; "
                              f"expected one of {', '.join(FORMATS)} (give it with --predictions-format)", **at)
    raise DataError(f"{path}: contains no records")


def judge_name(path: str | os.PathLike, format: str) -> str:
    """The default judge name of a predictions file (see the module doc)."""
    path = Path(path)
    if format == "llmbar" and len(path.parts) >= 4 and path.parts[-4] == "evaluators":
        return f"{path.parts[-3]}/{path.parts[-2]}"
    return path.stem


def load_predictions_file(path: str | os.PathLike, pairs: Sequence[LabelledPair],
                          format: str = "auto") -> list[Prediction]:
    """Predictions from a file of any supported `format` ("auto": detected); `pairs`: every loaded pair."""
    if format == "auto":
        format = detect_format(path)
    if format == "alignkit":
        return load_predictions(path)
    if format == "llmbar":
        return read_llmbar_results(path, pairs)
    raise ValueError(f"predictions format must be auto or one of {', '.join(FORMATS)}, got {format!r}")


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


def _content(pair_or_record) -> tuple:
    if isinstance(pair_or_record, LabelledPair):
        return pair_or_record.input, pair_or_record.output_1, pair_or_record.output_2
    return tuple(pair_or_record.get(key) for key in ("input", "output_1", "output_2"))


def read_llmbar_results(path: str | os.PathLike, pairs: Sequence[LabelledPair]) -> list[Prediction]:
    """An LLMBar evaluator's result.json as predictions for `pairs` (see the module doc)."""
    path = Path(path)
    dataset = path.parent.parent.parent.parent / "dataset.json" if path.parent.parent.parent.name == "evaluators" \
        else None
    by_index = {}
    if dataset is not None:
        by_index = {pair.index: pair for pair in pairs if pair.file and _same_file(pair.file, dataset)}
    by_content: dict[tuple, list[LabelledPair]] = {}
    for pair in pairs:
        by_content.setdefault(_content(pair), []).append(pair)
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
            matches = by_content.get(_content(record), [])
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
