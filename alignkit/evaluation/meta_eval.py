"""How good is a judge? Accuracy against gold-labelled pairs in LLMBar format.

A pair is `{"input", "output_1", "output_2", "label": 1|2}`, `label` naming the output that follows the
instruction. Each pair is judged in order "ab" (output_1 shown first) and, by default, "ba". Reported
per judge (strategy or predictions file):

* accuracy per order, and their mean: correct verdicts / all pairs. A failure (unparseable reply),
  a tie and a missing prediction all count as wrong, so nothing drops out of the denominator;
* positional agreement: share of all pairs where both orders chose the same underlying output;
* failure rate: failed judgments / (pairs x orders); missing predictions are listed separately;
* the same numbers per source file (e.g. Natural vs Adversarial-Neighbor).

Verdicts from elsewhere come as predictions JSONL: `{"id", "order"?: "ab"|"ba", "verdict": 1|2|null}`
(a missing order means "ab"; "tie" is accepted and counts as wrong). A pair's id is the file's own
"id" field when present, otherwise "<file stem>-<index>" with the list index from 0 (e.g. "natural-0");
error messages count records from 1, like the project's other readers.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

from alignkit.data.errors import DataError, RecordError, describe_type
from alignkit.data.readers import located_records, read_text
from alignkit.generation.backend import Backend
from alignkit.judges import ORDERS, JudgeConfig, PairItem, PairJudgment, Strategy, judge_pairs

Verdict = int | str | None  # 1 | 2 | "tie" | None (failure)
_FROM_JUDGE = {"a": 1, "b": 2, "tie": "tie", None: None}
_SHOWN_IDS = 20  # how many offending ids an error message lists


@dataclass(frozen=True)
class LabelledPair:
    id: str
    source: str  # file stem
    input: str
    output_1: str
    output_2: str
    label: int  # 1 or 2


def _id_list(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN_IDS])
    return shown + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


def load_llmbar(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LabelledPair]:
    """Load one or more LLMBar JSON files (each a list of pairs); ids must be unique across all of them."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    pairs: list[LabelledPair] = []
    seen: dict[str, str] = {}
    for path in paths:
        path = Path(path)
        try:
            records = json.loads(read_text(path))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: invalid JSON: {error.msg} at column {error.colno}") from None
        if not isinstance(records, list) or not records:
            raise DataError(f"{path}: expected a non-empty JSON list of pairs, got {describe_type(records)}")
        for index, record in enumerate(records):
            # Records are counted from 1 in messages, like the project's other readers; ids count from 0.
            at = {"path": str(path), "line": index + 1, "unit": "record"}
            if not isinstance(record, dict):
                raise RecordError("", f"expected a JSON object, got {describe_type(record)}", **at)
            for name in ("input", "output_1", "output_2"):
                if not isinstance(record.get(name), str):
                    raise RecordError(name, f"must be a string, got {describe_type(record.get(name))}", **at)
            label = record.get("label")
            if isinstance(label, bool) or label not in (1, 2):
                raise RecordError("label", f"must be 1 or 2, got {label!r}", **at)
            pair_id = f"{path.stem}-{index}"
            if "id" in record:
                if isinstance(record["id"], bool) or not isinstance(record["id"], (str, int)) or record["id"] == "":
                    raise RecordError("id", f"must be a non-empty string or an integer, got {record['id']!r}", **at)
                pair_id = str(record["id"])
            if pair_id in seen:
                raise RecordError("id", f"pair id {pair_id!r} already used by {seen[pair_id]}", **at)
            seen[pair_id] = f"{path}:record {index + 1}"
            pairs.append(LabelledPair(pair_id, path.stem, record["input"], record["output_1"],
                                      record["output_2"], label))
    return pairs


@dataclass
class JudgeAccuracy:
    name: str
    n_pairs: int
    orders: list[str]
    accuracy: dict[str, float]  # per order
    mean_accuracy: float
    positional_agreement: float | None  # None when only one order was judged
    n_failures: int
    failure_rate: float
    n_missing: int = 0
    missing: list[dict] = field(default_factory=list)  # {"id", "order"} without a prediction
    per_source: dict[str, "JudgeAccuracy"] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def report_row(self, dataset: str | None = None) -> dict:
        """One row of the HTML report's "strategy_comparison" section."""
        return {"strategy": self.name, "dataset": dataset, "accuracy_by_order": dict(self.accuracy),
                "mean_accuracy": self.mean_accuracy, "positional_agreement": self.positional_agreement,
                "parse_failure_rate": self.failure_rate, "n_items": self.n_pairs}


def _is_verdict(value: object) -> bool:
    return value is None or value == "tie" or (type(value) is int and value in (1, 2))


def _score(name: str, pairs: Sequence[LabelledPair], verdicts: Mapping[str, Mapping[str, Verdict]],
           orders: Sequence[str]) -> JudgeAccuracy:
    n = len(pairs)
    correct = {order: 0 for order in orders}
    failures, agreements, missing = 0, 0, []
    for pair in pairs:
        given = verdicts.get(pair.id, {})
        for order in orders:
            if order not in given:
                missing.append({"id": pair.id, "order": order})
            elif given[order] is None:
                failures += 1
            elif given[order] == pair.label:
                correct[order] += 1
        if len(orders) == 2 and given.get("ab") is not None and given.get("ab") == given.get("ba"):
            agreements += 1
    accuracy = {order: correct[order] / n if n else 0.0 for order in orders}
    return JudgeAccuracy(name, n, list(orders), accuracy, sum(accuracy.values()) / len(orders),
                         agreements / n if len(orders) == 2 and n else None,
                         failures, failures / (n * len(orders)) if n else 0.0, len(missing), missing)


def score_verdicts(pairs: Sequence[LabelledPair], verdicts: Mapping[str, Mapping[str, Verdict]],
                   name: str = "judge", orders: Sequence[str] | None = None) -> JudgeAccuracy:
    """Score `verdicts[pair_id][order]` (1, 2, "tie" or None) against the pairs' gold labels.

    `orders` defaults to the orders present in `verdicts`. Ids not among `pairs` raise; pairs without a
    verdict for an order are listed in `missing` and count as wrong.
    """
    if not pairs:
        raise ValueError(f"{name}: no pairs to score against")
    known = {pair.id for pair in pairs}
    unknown = [pair_id for pair_id in verdicts if pair_id not in known]
    if unknown:
        raise ValueError(f"{name}: verdicts for {len(unknown)} unknown pair id(s): {_id_list(unknown)}")
    for pair_id, by_order in verdicts.items():
        for order, value in by_order.items():
            if order not in ORDERS:
                raise ValueError(f"{name}: pair {pair_id!r}: order must be 'ab' or 'ba', got {order!r}")
            if not _is_verdict(value):
                raise ValueError(f'{name}: pair {pair_id!r} order {order}: verdict must be 1, 2, "tie" or None, '
                                 f"got {value!r}")
    if orders is None:
        present = {order for by_order in verdicts.values() for order in by_order}
        orders = [order for order in ORDERS if order in present]
    if not orders:
        raise ValueError(f"{name}: no verdicts to score")
    result = _score(name, pairs, verdicts, orders)
    sources = sorted({pair.source for pair in pairs})
    result.per_source = {source: _score(name, [p for p in pairs if p.source == source], verdicts, orders)
                         for source in sources}
    return result


@dataclass(frozen=True)
class Prediction:
    id: str
    order: str
    verdict: Verdict
    where: str  # "file:line", for error messages


def load_predictions(path: str | os.PathLike) -> list[Prediction]:
    """Read predictions JSONL `{"id", "order"?: "ab"|"ba", "verdict": 1|2|null}`; order defaults to "ab"."""
    predictions, seen = [], {}
    for at, record in located_records(path):
        where = f"{at['path']}:{at['line']}"
        pair_id = record.get("id")
        if isinstance(pair_id, bool) or not isinstance(pair_id, (str, int)) or pair_id == "":
            raise RecordError("id", f"must be a non-empty string or an integer, got {describe_type(pair_id)}", **at)
        order = record.get("order", "ab")
        if order not in ORDERS:
            raise RecordError("order", f"must be 'ab' or 'ba', got {order!r}", **at)
        if "verdict" not in record:
            raise RecordError("verdict", "missing (use null for a failed judgment)", **at)
        if not _is_verdict(record["verdict"]):
            raise RecordError("verdict", f'must be 1, 2, "tie" or null, got {record["verdict"]!r}', **at)
        key = (str(pair_id), order)
        if key in seen:
            raise RecordError("id", f"second prediction for {key[0]!r} order {order} (first at {seen[key]})", **at)
        seen[key] = where
        predictions.append(Prediction(key[0], order, record["verdict"], where))
    return predictions


def evaluate_predictions(pairs: Sequence[LabelledPair], predictions: Sequence[Prediction],
                         name: str = "predictions") -> JudgeAccuracy:
    """Score predictions produced elsewhere; unknown ids raise listing them, missing ones are reported."""
    known = {pair.id for pair in pairs}
    unknown = [p for p in predictions if p.id not in known]
    if unknown:
        raise ValueError(f"{name}: {len(unknown)} prediction(s) name pair ids that are not in the loaded pairs: "
                         + _id_list([f"{p.id} ({p.where})" for p in unknown]))
    verdicts: dict[str, dict[str, Verdict]] = {}
    for prediction in predictions:
        verdicts.setdefault(prediction.id, {})[prediction.order] = prediction.verdict
    return score_verdicts(pairs, verdicts, name)


@dataclass
class MetaEvalReport:
    results: dict[str, JudgeAccuracy]  # strategy name -> scores
    judgments: dict[str, list[PairJudgment]]  # strategy name -> one judgment per pair
    pair_ids: list[str]

    def predictions(self, strategy: str) -> list[dict]:
        """The strategy's verdicts as predictions-file records, for saving and re-scoring later."""
        records = []
        for pair_id, judgment in zip(self.pair_ids, self.judgments[strategy]):
            for order, verdict in judgment.verdicts().items():
                records.append({"id": pair_id, "order": order, "verdict": _FROM_JUDGE[verdict]})
        return records

    def report_rows(self) -> list[dict]:
        """Rows for the HTML report's "strategy_comparison" section: per strategy, overall ("all") and per source."""
        rows = []
        for result in self.results.values():
            rows.append(result.report_row("all"))
            rows.extend(by_source.report_row(source) for source, by_source in result.per_source.items())
        return rows

    def to_dict(self, include_judgments: bool = False) -> dict:
        data: dict = {"results": {name: result.to_dict() for name, result in self.results.items()}}
        if include_judgments:
            data["judgments"] = {name: [j.to_dict() for j in judged] for name, judged in self.judgments.items()}
        return data


def evaluate_judge(backend: Backend, pairs: Sequence[LabelledPair], strategies: Sequence[str] = ("plain",),
                   config: JudgeConfig = JudgeConfig()) -> MetaEvalReport:
    """Judge every pair with each strategy (other settings from `config`) and score against the labels."""
    names = [Strategy.parse(strategy).name for strategy in strategies]
    if len(set(names)) != len(names):
        raise ValueError(f"strategies {list(strategies)} name the same strategy twice")
    items = [PairItem(pair.input, pair.output_1, pair.output_2) for pair in pairs]
    results, judgments = {}, {}
    for name in names:
        judged = judge_pairs(backend, items, replace(config, strategy=name))
        verdicts = {pair.id: {order: _FROM_JUDGE[v] for order, v in judgment.verdicts().items()}
                    for pair, judgment in zip(pairs, judged)}
        results[name] = score_verdicts(pairs, verdicts, name, config.orders)
        judgments[name] = judged
    return MetaEvalReport(results, judgments, [pair.id for pair in pairs])
