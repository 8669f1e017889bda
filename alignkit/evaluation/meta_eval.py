"""How good is a judge? Accuracy against gold-labelled pairs in LLMBar format.

A pair is `{"input", "output_1", "output_2", "label": 1|2|"tie"}`, `label` naming the output that
follows the instruction ("tie": neither is better; only a tie verdict is right on it). Each pair is
judged in order "ab" (output_1 shown first) and, by default, "ba". Verdicts always name the
underlying output (1 or 2), whichever order it was shown in. Reported per judge (strategy or
predictions file):

* accuracy per order, and their mean: correct verdicts / all pairs. A failure (unparseable reply),
  a wrong tie and a missing prediction all count as wrong, so nothing drops out of the denominator;
* both_correct: share of pairs judged correctly in both orders;
* positional agreement, by one of two definitions (`agreement`):
  - "same-output" (default): share of all pairs where both orders chose the same underlying
    output (1 or 2). A tie in both orders, or a failure in both, chose nothing and is no agreement;
  - "llmbar": share of pairs whose two verdicts are equal, whatever they are, as LLMBar's own
    evaluator counts its "equal" statistic: two failures (both None) agree. Use it to reproduce
    LLMBar's published tables;
* Cohen's kappa per order (and its mean): the verdicts of one order against the gold labels, each
  pair one observation, categories "1", "2", "tie", "failure" (unparseable) and "missing" (no
  prediction), so failures are a category of their own rather than a guess. Undefined (None) when
  both sides use one and the same category throughout. (LLMBar's statistics.json also has
  "kappa_*" numbers, but its evaluator maps a winner "2" to 0 before comparing with labels 1/2;
  they are not this kappa and are not reproduced.)
* failure rate: failed judgments / (pairs x orders); missing predictions are listed separately;
* the same numbers per pairs file (e.g. Natural vs Adversarial/Neighbor).

Pairs files are named by the name the caller gives (`name=path` on the command line, a
`(name, path)` tuple here) or else by their path as given (normalised), never by the file stem
alone: LLMBar's subsets are all called `dataset.json`. A pair's id is the file's own "id" field
when present, otherwise "<name>-<index>" with the list index from 0 (e.g. "natural-0" for a file
loaded as `natural=...`, "Dataset/LLMBar/Natural/dataset.json-0" for one loaded by path).

Verdicts from elsewhere come as predictions JSONL: `{"id", "order"?: "ab"|"ba", "verdict": 1|2|null}`
(a missing order means "ab"; "tie" is accepted). Other tools' files (LLMBar's result.json, ...) are
read by `alignkit.evaluation.importers` into the same predictions. Error messages count records
from 1, like the project's other readers.
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
Label = int | str  # 1 | 2 | "tie"
AGREEMENTS = ("same-output", "llmbar")
_FROM_JUDGE = {"a": 1, "b": 2, "tie": "tie", None: None}
_SHOWN_IDS = 20  # how many offending ids an error message lists
_KAPPA_CATEGORIES = ["1", "2", "tie", "failure", "missing"]


@dataclass(frozen=True)
class LabelledPair:
    id: str
    source: str  # the pairs file's name (given, or its path)
    input: str
    output_1: str
    output_2: str
    label: Label  # 1, 2 or "tie"
    file: str = ""  # the path it was read from, for importers that locate their pairs file
    index: int = -1  # its position in that file, from 0
    key: tuple = ()  # what an importer matches other tools' judgments to (MT-Bench: question, models, turn)


def _id_list(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN_IDS])
    return shown + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


def split_name(argument: str) -> tuple[str | None, str]:
    """`name=path` -> (name, path); a plain path (or an existing file whose name has "=") -> (None, path)."""
    if "=" in argument and not os.path.exists(argument):
        name, path = argument.split("=", 1)
        if name and path:
            return name, path
        raise DataError(f"{argument!r}: expected NAME=PATH with both parts non-empty")
    return None, argument


def path_name(path: str | os.PathLike) -> str:
    """A pairs file's default name: its path as given, normalised (so "./a//b.json" is "a/b.json")."""
    return os.path.normpath(os.fspath(path)).replace(os.sep, "/")


def _is_label(value: object) -> bool:
    return value == "tie" or (type(value) is int and value in (1, 2))


def load_llmbar(paths: str | os.PathLike | tuple[str, str | os.PathLike]
                | Sequence[str | os.PathLike | tuple[str, str | os.PathLike]]) -> list[LabelledPair]:
    """Load one or more LLMBar JSON files (each a list of pairs); ids must be unique across all of them.

    Each entry is a path (named by its path) or a `(name, path)` tuple; names must differ.
    """
    if isinstance(paths, (str, os.PathLike, tuple)):
        paths = [paths]
    named = [entry if isinstance(entry, tuple) else (path_name(entry), entry) for entry in paths]
    pairs: list[LabelledPair] = []
    seen: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, path in named:
        path = Path(path)
        if name in names:
            raise DataError(f"{path}: its name {name!r} is already the name of {names[name]}; "
                            "give each pairs file its own name with NAME=PATH")
        names[name] = str(path)
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
            for key in ("input", "output_1", "output_2"):
                if not isinstance(record.get(key), str):
                    raise RecordError(key, f"must be a string, got {describe_type(record.get(key))}", **at)
            label = record.get("label")
            if not _is_label(label):
                raise RecordError("label", f'must be 1, 2 or "tie", got {label!r}', **at)
            pair_id = f"{name}-{index}"
            if "id" in record:
                if isinstance(record["id"], bool) or not isinstance(record["id"], (str, int)) or record["id"] == "":
                    raise RecordError("id", f"must be a non-empty string or an integer, got {record['id']!r}", **at)
                pair_id = str(record["id"])
            if pair_id in seen:
                raise RecordError("id", f"pair id {pair_id!r} already used by {seen[pair_id]}", **at)
            seen[pair_id] = f"{path}:record {index + 1}"
            pairs.append(LabelledPair(pair_id, name, record["input"], record["output_1"], record["output_2"], label,
                                      str(path), index))
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
    agreement_method: str = "same-output"
    both_correct: float | None = None  # None when only one order was judged
    kappa: dict[str, float | None] = field(default_factory=dict)  # per order, against the gold labels
    mean_kappa: float | None = None  # None when an order's kappa is undefined

    def to_dict(self) -> dict:
        return asdict(self)

    def report_row(self, dataset: str | None = None) -> dict:
        """One row of the HTML report's "strategy_comparison" section."""
        return {"strategy": self.name, "dataset": dataset, "accuracy_by_order": dict(self.accuracy),
                "mean_accuracy": self.mean_accuracy, "positional_agreement": self.positional_agreement,
                "agreement_method": self.agreement_method, "both_correct": self.both_correct,
                "kappa": self.mean_kappa, "parse_failure_rate": self.failure_rate, "n_items": self.n_pairs}


def _is_verdict(value: object) -> bool:
    return value is None or value == "tie" or (type(value) is int and value in (1, 2))


def cohen_kappa(gold: Sequence[str], judged: Sequence[str]) -> float | None:
    """Cohen's kappa (p_o - p_e) / (1 - p_e) of two equally long label sequences; None when undefined.

    It is undefined exactly when chance agreement p_e is 1: both sides use one and the same
    category throughout.
    """
    if len(gold) != len(judged) or not gold:
        raise ValueError(f"kappa needs two non-empty sequences of one length, got {len(gold)} and {len(judged)}")
    if len(set(gold) | set(judged)) == 1:
        return None
    from sklearn.metrics import cohen_kappa_score  # loads in about a second; only scoring needs it

    return float(cohen_kappa_score(list(gold), list(judged), labels=_KAPPA_CATEGORIES))


def _kappa_category(given: Mapping[str, Verdict], order: str) -> str:
    if order not in given:
        return "missing"
    return "failure" if given[order] is None else str(given[order])


def agrees(ab: Verdict, ba: Verdict, *, both_present: bool = True, method: str = "same-output") -> bool:
    """Whether one pair's two verdicts agree, by `method` (see the module doc)."""
    if not both_present:
        return False
    if method == "llmbar":
        return ab == ba
    return ab in (1, 2) and ab == ba


def _score(name: str, pairs: Sequence[LabelledPair], verdicts: Mapping[str, Mapping[str, Verdict]],
           orders: Sequence[str], agreement: str) -> JudgeAccuracy:
    n = len(pairs)
    correct = {order: 0 for order in orders}
    failures, agreements, both, missing = 0, 0, 0, []
    for pair in pairs:
        given = verdicts.get(pair.id, {})
        right = 0
        for order in orders:
            if order not in given:
                missing.append({"id": pair.id, "order": order})
            elif given[order] is None:
                failures += 1
            elif given[order] == pair.label:
                correct[order] += 1
                right += 1
        if len(orders) == 2:
            both += right == 2
            agreements += agrees(given.get("ab"), given.get("ba"), both_present="ab" in given and "ba" in given,
                                 method=agreement)
    accuracy = {order: correct[order] / n for order in orders}
    gold = [str(pair.label) for pair in pairs]
    kappa = {order: cohen_kappa(gold, [_kappa_category(verdicts.get(pair.id, {}), order) for pair in pairs])
             for order in orders}
    defined = [value for value in kappa.values() if value is not None]
    paired = len(orders) == 2
    return JudgeAccuracy(name, n, list(orders), accuracy, sum(accuracy.values()) / len(orders),
                         agreements / n if paired else None, failures, failures / (n * len(orders)),
                         len(missing), missing, agreement_method=agreement, both_correct=both / n if paired else None,
                         kappa=kappa, mean_kappa=sum(defined) / len(defined) if len(defined) == len(kappa) else None)


def score_verdicts(pairs: Sequence[LabelledPair], verdicts: Mapping[str, Mapping[str, Verdict]],
                   name: str = "judge", orders: Sequence[str] | None = None,
                   agreement: str = "same-output") -> JudgeAccuracy:
    """Score `verdicts[pair_id][order]` (1, 2, "tie" or None) against the pairs' gold labels.

    `orders` defaults to the orders present in `verdicts`. Ids not among `pairs` raise; pairs without a
    verdict for an order are listed in `missing` and count as wrong. `agreement`: see the module doc.
    """
    if agreement not in AGREEMENTS:
        raise ValueError(f"agreement must be one of {', '.join(AGREEMENTS)}, got {agreement!r}")
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
    result = _score(name, pairs, verdicts, orders, agreement)
    sources = sorted({pair.source for pair in pairs})
    result.per_source = {source: _score(name, [p for p in pairs if p.source == source], verdicts, orders, agreement)
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
                         name: str = "predictions", agreement: str = "same-output") -> JudgeAccuracy:
    """Score predictions produced elsewhere (possibly from several files); unknown ids raise listing them,
    a second prediction for one pair and order raises naming both, missing ones are reported."""
    known = {pair.id for pair in pairs}
    unknown = [p for p in predictions if p.id not in known]
    if unknown:
        raise ValueError(f"{name}: {len(unknown)} prediction(s) name pair ids that are not in the loaded pairs: "
                         + _id_list([f"{p.id} ({p.where})" for p in unknown]))
    verdicts: dict[str, dict[str, Verdict]] = {}
    where: dict[tuple[str, str], str] = {}
    for prediction in predictions:
        key = (prediction.id, prediction.order)
        if key in where:
            raise ValueError(f"{name}: two predictions for pair {prediction.id!r} order {prediction.order}: "
                             f"{where[key]} and {prediction.where}")
        where[key] = prediction.where
        verdicts.setdefault(prediction.id, {})[prediction.order] = prediction.verdict
    return score_verdicts(pairs, verdicts, name, agreement=agreement)


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
                   config: JudgeConfig = JudgeConfig(), agreement: str = "same-output") -> MetaEvalReport:
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
        results[name] = score_verdicts(pairs, verdicts, name, config.orders, agreement)
        judgments[name] = judged
    return MetaEvalReport(results, judgments, [pair.id for pair in pairs])
