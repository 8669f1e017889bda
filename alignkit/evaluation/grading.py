"""Single-answer (1-10, MT-Bench style) and rubric (1-5) grading with an LLM judge.

Each graded item gets a score, or None with `failed=True` and the reason when the judge's reply could
not be parsed (or the backend errored). Averages use parsed scores only, and every summary carries
the failure count and rate next to the mean, so a judge that often fails is visible rather than hidden.

MT-Bench questions are graded per turn: turn 1 on the first exchange alone, turn k with the earlier
turns shown as context. Answers come from the caller, one string per turn.

Asking the judge and reading its scores is `alignkit.judges.ask_scores`; this module holds the
question and answer files, the prompt for each graded item, and the summaries.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from alignkit.data.errors import RecordError, describe_type
from alignkit.data.readers import located_records
from alignkit.generation.backend import Backend, SamplingParams
from alignkit.judges import RUBRIC_SCALE, SINGLE_SCALE, CallLog, ask_scores, rubric_prompt, single_grade_prompt


def _text_list(record: dict, name: str, at: dict, required: bool = True) -> tuple[str, ...] | None:
    value = record.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RecordError(name, f"must be a non-empty list of strings, got {describe_type(value)}", **at)
    return tuple(value)


def _id(record: dict, name: str, at: dict) -> str:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise RecordError(name, f"must be a non-empty string or an integer, got {describe_type(value)}", **at)
    return str(value)  # ids are compared as text, so 81 and "81" name the same question


def _line(at: dict) -> str:
    return f"{at['path']}:{at['line']}"


@dataclass(frozen=True)
class MTBenchQuestion:
    question_id: str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None  # one reference answer per turn, when the file has them


def load_mt_bench_questions(path: str | os.PathLike) -> list[MTBenchQuestion]:
    """Read `{"question_id", "category", "turns": [...], "reference"?: [...]}` lines."""
    questions, seen = [], {}
    for at, record in located_records(path):
        question_id = _id(record, "question_id", at)
        if question_id in seen:
            raise RecordError("question_id", f"{question_id!r} already used at {seen[question_id]}", **at)
        seen[question_id] = _line(at)
        category = record.get("category")
        if not isinstance(category, str) or not category:
            raise RecordError("category", f"must be a non-empty string, got {describe_type(category)}", **at)
        questions.append(MTBenchQuestion(question_id, category, _text_list(record, "turns", at),
                                         _text_list(record, "reference", at, required=False)))
    return questions


def load_answers(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """Read answers as `{"question_id", "turns": [...]}` or FastChat's `{"question_id", "choices": [{"turns"}]}`."""
    answers: dict[str, tuple[str, ...]] = {}
    for at, record in located_records(path):
        question_id = _id(record, "question_id", at)
        if question_id in answers:
            raise RecordError("question_id", f"a second answer for question {question_id!r}", **at)
        if "choices" in record:
            choices = record["choices"]
            if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
                raise RecordError("choices", "must be a list holding exactly one object", **at)
            turns = choices[0].get("turns")
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
                raise RecordError("choices[0].turns", "must be a non-empty list of strings", **at)
            answers[question_id] = tuple(turns)
        else:
            answers[question_id] = _text_list(record, "turns", at)
    return answers


@dataclass(frozen=True)
class GradingConfig:
    params: SamplingParams = SamplingParams(max_tokens=512)
    max_parse_retries: int = 0  # re-ask after a failure, each time with a different seed
    use_reference: bool = True  # show a question's reference answer when it has one
    batch_size: int = 64


@dataclass
class GradedItem:
    id: str
    category: str
    turn: int | None  # 1-based MT-Bench turn; None for rubric items
    score: float | None
    failed: bool
    failure: str | None = None
    judge: CallLog | None = None


@dataclass
class ScoreSummary:
    mean: float | None  # over parsed scores only; None when every item failed
    n: int
    n_failed: int
    failure_rate: float


@dataclass
class GradingResult:
    scale: tuple[int, int]
    items: list[GradedItem]
    overall: ScoreSummary
    per_category: dict[str, ScoreSummary]
    per_turn: dict[int, ScoreSummary] = field(default_factory=dict)

    def to_dict(self, include_calls: bool = False) -> dict:
        data = asdict(self)
        if not include_calls:
            for item in data["items"]:
                item.pop("judge")
        return data


def _summary(items: Sequence[GradedItem]) -> ScoreSummary:
    scores = [item.score for item in items if not item.failed]
    n_failed = len(items) - len(scores)
    return ScoreSummary(sum(scores) / len(scores) if scores else None, len(items), n_failed,
                        n_failed / len(items) if items else 0.0)


def summarise(scale: tuple[int, int], items: list[GradedItem]) -> GradingResult:
    def group(key) -> dict:
        groups: dict = {}
        for item in items:
            groups.setdefault(key(item), []).append(item)
        return {name: _summary(members) for name, members in sorted(groups.items())}
    per_turn = group(lambda item: item.turn) if any(item.turn is not None for item in items) else {}
    return GradingResult(scale, items, _summary(items), group(lambda item: item.category), per_turn)


def _grade(backend: Backend, prompts: list, labels: list[tuple[str, str, int | None]], shown: list[list[str]],
           label: str, scale: tuple[int, int], config: GradingConfig) -> GradingResult:
    """`shown[i]` holds the answers prompt i shows the judge: a score line copied from them is no verdict."""
    if not prompts:
        raise ValueError("nothing to grade: no questions or items were given")
    asked = ask_scores(backend, prompts, shown, label, scale, config.params, config.max_parse_retries,
                       config.batch_size)
    items = [GradedItem(item_id, category, turn, result.parsed.score, result.parsed.failure is not None,
                        result.parsed.failure, result.log)
             for (item_id, category, turn), result in zip(labels, asked)]
    return summarise(scale, items)


def grade_single(backend: Backend, questions: Sequence[MTBenchQuestion], answers: Mapping[str | int, Sequence[str]],
                 config: GradingConfig = GradingConfig(), turns: Sequence[int] | None = None) -> GradingResult:
    """Rate the caller's `answers` (question_id -> one answer per turn) to `questions` from 1 to 10.

    `turns` (1-based) limits grading to those turns; by default every turn of every question is graded.
    Every question needs an answer and every answer a question: mismatches raise, listing the ids.
    """
    by_id = {str(key): value for key, value in answers.items()}
    if len(by_id) != len(answers):
        raise ValueError("answers use the same question id twice (as a number and as text)")
    question_ids = [question.question_id for question in questions]
    missing = [qid for qid in question_ids if qid not in by_id]
    unknown = sorted(set(by_id) - set(question_ids))
    if missing or unknown:
        raise ValueError(f"answers do not match questions: missing answers for {missing}; "
                         f"answers for unknown question ids {unknown}")
    prompts, labels, shown = [], [], []
    for question in questions:
        answer = by_id[question.question_id]
        graded_turns = list(turns) if turns is not None else list(range(1, len(question.turns) + 1))
        for turn in graded_turns:
            if not 1 <= turn <= len(question.turns):
                raise ValueError(f"question {question.question_id}: has no turn {turn}")
            if len(answer) < turn or not all(isinstance(text, str) for text in answer[:turn]):
                raise ValueError(f"question {question.question_id}: answer needs a string for each of "
                                 f"turns 1-{turn}, got {len(answer)} turn(s)")
            reference = question.reference if config.use_reference else None
            if reference is not None and len(reference) < turn:
                raise ValueError(f"question {question.question_id}: field 'reference' has no entry for turn {turn}")
            prompts.append(single_grade_prompt(
                question.turns[:turn], answer[:turn], reference[:turn] if reference else None))
            labels.append((question.question_id, question.category, turn))
            shown.append(list(answer[:turn]))
    return _grade(backend, prompts, labels, shown, "Rating", SINGLE_SCALE, config)


@dataclass(frozen=True)
class RubricItem:
    id: str
    instruction: str
    response: str
    rubric: str | None = None  # overrides the rubric passed to grade_rubric
    reference: str | None = None
    category: str = "all"


def load_rubric_items(path: str | os.PathLike) -> list[RubricItem]:
    """Read `{"id", "instruction", "response", "rubric"?, "reference"?, "category"?}` lines."""
    items, seen = [], {}
    for at, record in located_records(path):
        item_id = _id(record, "id", at)
        if item_id in seen:
            raise RecordError("id", f"{item_id!r} already used at {seen[item_id]}", **at)
        seen[item_id] = _line(at)
        for name in ("instruction", "response"):
            if not isinstance(record.get(name), str):
                raise RecordError(name, f"must be a string, got {describe_type(record.get(name))}", **at)
        for name in ("rubric", "reference", "category"):
            if name in record and not isinstance(record[name], str):
                raise RecordError(name, f"must be a string when present, got {describe_type(record[name])}", **at)
        items.append(RubricItem(item_id, record["instruction"], record["response"], record.get("rubric"),
                                record.get("reference"), record.get("category", "all")))
    return items


def grade_rubric(backend: Backend, items: Sequence[RubricItem], rubric: str | None = None,
                 config: GradingConfig = GradingConfig()) -> GradingResult:
    """Score each item's response from 1 to 5 against its own rubric, or `rubric` when it has none."""
    prompts, labels, shown = [], [], []
    for index, item in enumerate(items):
        item_rubric = item.rubric if item.rubric is not None else rubric
        if not item_rubric or not item_rubric.strip():
            raise ValueError(f"rubric item {index} (id {item.id!r}): no rubric given, on the item or to grade_rubric")
        reference = item.reference if config.use_reference else None
        prompts.append(rubric_prompt(item.instruction, item.response, item_rubric, reference))
        labels.append((item.id, item.category, None))
        shown.append([item.response])
    return _grade(backend, prompts, labels, shown, "Score", RUBRIC_SCALE, config)
