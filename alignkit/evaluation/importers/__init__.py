"""Other tools' judgments and gold labels, read into alignkit's own: meta-eval predictions and pairs,
leaderboard battles, graded items.

| format | the tool's file | read as |
|---|---|---|
| alignkit | predictions `{"id", "order"?, "verdict"}`; battles `{"model_a", "model_b", "winner"}` | predictions, battles |
| llmbar | an LLMBar evaluator's `result.json` (`llmbar`) | predictions |
| fastchat-pair | FastChat's `<judge>_pair.jsonl` (`fastchat`) | predictions, battles |
| fastchat-single | FastChat's `<judge>_single.jsonl` (`fastchat`) | graded items (`eval grade --judgments`) |
| mt-bench-human | MT-Bench human judgments (`fastchat`) | gold pairs, battles |
| alpacaeval | AlpacaEval's `annotations.json` (`alpacaeval`) | predictions, battles |

Gold pairs are LLMBar's `dataset.json` layout (`meta_eval.load_llmbar`) or MT-Bench human judgments.
A format is given or detected from the fields of the file's first record; each reader checks every
record and names the file, record and field of a bad one.

A judge's default name: the file stem, except "<model>/<method>" for an LLMBar result.json under
`evaluators/` (so the Natural and Neighbor files of one evaluator are one judge).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from alignkit.data.errors import DataError, RecordError
from alignkit.data.readers import located_records
from alignkit.evaluation import leaderboard as bt
from alignkit.evaluation.grading import GradedItem
from alignkit.evaluation.importers import alpacaeval, fastchat
from alignkit.evaluation.importers.llmbar import read_llmbar_results
from alignkit.evaluation.importers.matching import ImportedBattles, ImportedPredictions
from alignkit.evaluation.meta_eval import LabelledPair, load_llmbar, load_predictions, path_name

PREDICTION_FORMATS = ("alignkit", "llmbar", "fastchat-pair", "alpacaeval")
BATTLE_FORMATS = ("alignkit", "fastchat-pair", "mt-bench-human", "alpacaeval")
PAIRS_FORMATS = ("llmbar", "mt-bench-human")
GRADE_FORMATS = ("fastchat-single",)
FORMATS = ("alignkit", "llmbar", "fastchat-pair", "fastchat-single", "mt-bench-human", "alpacaeval")
_WHAT = {"alignkit": "alignkit predictions or battles", "llmbar": "LLMBar evaluator results",
         "fastchat-pair": "FastChat pairwise judgments", "fastchat-single": "FastChat single-answer ratings",
         "mt-bench-human": "MT-Bench human judgments", "alpacaeval": "AlpacaEval annotations"}
_FIELDS = (  # first match wins: the fields that tell each format apart
    ("alignkit", ("id", "verdict")),
    ("llmbar", ("results", "output_1")),
    ("fastchat-pair", ("g1_winner", "model_1")),
    ("fastchat-single", ("model", "score", "turn")),
    ("alpacaeval", ("preference", "output_1")),
    ("mt-bench-human", ("conversation_a", "winner")),
    ("alignkit", ("model_a", "model_b", "winner")),
    ("llmbar", ("input", "output_1", "label")),  # a dataset.json: gold pairs
)


def detect_format(path: str | os.PathLike) -> str:
    """The format of `path` (one of FORMATS), from the fields of its first record."""
    for at, record in located_records(path):
        for name, fields in _FIELDS:
            if all(field in record for field in fields):
                return name
        raise RecordError("", f"cannot tell the format from the fields {sorted(record)[:8]}; expected one of "
                              f"{', '.join(FORMATS)}", **at)
    raise DataError(f"{path}: contains no records")


def _resolve(path: str | os.PathLike, format: str, allowed: Sequence[str], use: str, option: str) -> str:
    given = format != "auto"
    if given and format not in FORMATS:
        raise ValueError(f"{option} must be auto or one of {', '.join(allowed)}, got {format!r}")
    format = format if given else detect_format(path)
    if format not in allowed:
        how = f"given as {format}" if given else f"its fields say {format}"
        raise DataError(f"{path}: holds {_WHAT[format]} ({how}), which are not {use}; {use} come from "
                        f"{', '.join(allowed)} files")
    return format


def judge_name(path: str | os.PathLike, format: str) -> str:
    """The default judge name of a predictions file (see the module doc)."""
    path = Path(path)
    if format == "llmbar" and len(path.parts) >= 4 and path.parts[-4] == "evaluators":
        return f"{path.parts[-3]}/{path.parts[-2]}"
    return path.stem


def load_predictions_file(path: str | os.PathLike, pairs: Sequence[LabelledPair],
                          format: str = "auto") -> ImportedPredictions:
    """Predictions for `pairs` (every loaded pair) from a file of any prediction format ("auto": detected)."""
    format = _resolve(path, format, PREDICTION_FORMATS, "pairwise verdicts", "--predictions-format")
    if format == "alignkit":
        predictions = load_predictions(path)
        return ImportedPredictions(predictions, len(predictions))
    if format == "llmbar":
        predictions = read_llmbar_results(path, pairs)
        return ImportedPredictions(predictions, len(predictions) // 2)
    if format == "fastchat-pair":
        return fastchat.pair_predictions(path, pairs)
    return alpacaeval.annotation_predictions(path, pairs)


def load_battles_file(path: str | os.PathLike, format: str = "auto") -> ImportedBattles:
    """Leaderboard battles from a file of any battle format ("auto": detected)."""
    format = _resolve(path, format, BATTLE_FORMATS, "battles", "--battles-format")
    if format == "alignkit":
        battles = bt.load_battles(path)
        return ImportedBattles(battles, len(battles))
    if format == "fastchat-pair":
        return fastchat.pair_battles(path)
    if format == "mt-bench-human":
        return fastchat.human_battles(path)
    return alpacaeval.annotation_battles(path)


def load_graded_file(path: str | os.PathLike, categories: Mapping[str, str] | None = None,
                     format: str = "auto") -> dict[str, list[GradedItem]]:
    """model -> graded items, from another tool's single-answer ratings."""
    _resolve(path, format, GRADE_FORMATS, "single-answer ratings", "--judgments-format")
    return fastchat.single_judgments(path, categories)


def load_pairs(entries: Sequence[str | os.PathLike | tuple[str, str | os.PathLike]]) -> list[LabelledPair]:
    """Gold pairs from LLMBar dataset files and MT-Bench human judgments (each a path or (name, path));
    names and pair ids must be unique across all of them."""
    named = [entry if isinstance(entry, tuple) else (path_name(entry), entry) for entry in entries]
    seen_names: dict[str, str] = {}
    for name, path in named:
        if name in seen_names:
            raise DataError(f"{path}: its name {name!r} is already the name of {seen_names[name]}; "
                            "give each pairs file its own name with NAME=PATH")
        seen_names[name] = os.fspath(path)
    pairs: list[LabelledPair] = []
    for name, path in named:
        if _resolve(path, "auto", PAIRS_FORMATS, "gold pairs", "--pairs") == "llmbar":
            pairs.extend(load_llmbar([(name, path)]))
        else:
            pairs.extend(fastchat.human_judgment_pairs(name, path))
    where: dict[str, str] = {}
    for pair in pairs:
        if pair.id in where:
            raise DataError(f"{pair.file}:record {pair.index + 1}: pair id {pair.id!r} already used by {where[pair.id]}")
        where[pair.id] = f"{pair.file}:record {pair.index + 1}"
    return pairs


__all__ = ["FORMATS", "PREDICTION_FORMATS", "BATTLE_FORMATS", "PAIRS_FORMATS", "GRADE_FORMATS", "ImportedBattles",
           "ImportedPredictions", "detect_format", "judge_name", "load_predictions_file", "load_battles_file",
           "load_graded_file", "load_pairs", "read_llmbar_results"]
