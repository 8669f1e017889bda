"""FastChat's MT-Bench files (fastchat/llm_judge): the judge outputs of gen_judgment.py and people's votes.

* Single-answer judgments (`model_judgment/<judge>_single.jsonl`): `{"question_id", "model", "judge":
  [judge model, prompt name], "user_prompt", "judgment", "score", "turn", "tstamp"}`. `score` is the
  1-10 rating FastChat read from "[[rating]]", or -1 when it could read none. A -1 is a failure here:
  left out of the means (as FastChat's show_result.py leaves it out) and counted. `single_judgments`
  gives alignkit's graded items per model, so `eval grade --judgments` prints what show_result.py
  prints (the mean of turn 1, of turn 2 and of both), plus per category when the questions are given.
* Pairwise judgments (`model_judgment/<judge>_pair.jsonl`): `{"question_id", "model_1", "model_2",
  "g1_winner", "g2_winner", "judge", "g1_user_prompt", "g1_judgment", ..., "turn"}`. Game 1 shows
  model_1's answer as A, game 2 shows model_2's as A; FastChat has mapped both winners back to
  "model_1", "model_2", "tie", or "error" (no verdict read: a failure). A record made by comparing two
  single-answer ratings (it has "m1_score" and "m2_score") holds one verdict, not two orders.
  - As meta-eval predictions, against gold pairs from MT-Bench human judgments, matched on the
    question, the two models (either way round) and the turn. Game 1 is order ab when model_1 is the
    pair's output_1, else ba. Judgments of model pairs nobody voted on are skipped and counted.
  - As leaderboard battles: each game with a verdict is one battle, as alignkit's own judged battles.
* Human judgments (`lmsys/mt_bench_human_judgments`, the records compute_agreement.py reads):
  `{"question_id", "model_a", "model_b", "winner", "judge", "turn", "conversation_a", "conversation_b"}`,
  one person's vote each. A winner containing "tie" ("tie", "tie (bothbad)", "tie (inconsistent)") is a
  tie. As gold pairs for meta-eval: input is that turn's user message and the outputs are the two
  answers to it (earlier turns are context the pair does not carry, so judging these pairs afresh sees
  the turn alone); several people's votes on one question and model pair are several pairs, each
  scored, as compute_agreement.py compares a judge with every vote. As battles: one battle per vote.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Mapping, Sequence

from alignkit.data.errors import DataError, RecordError, describe_type
from alignkit.data.readers import located_records
from alignkit.evaluation.grading import GradedItem
from alignkit.evaluation.importers.matching import (
    ImportedBattles, ImportedPredictions, flipped, is_number,
)
from alignkit.evaluation.leaderboard import Battle
from alignkit.evaluation.meta_eval import LabelledPair, Prediction

PAIR_WINNERS = {"model_1": 1, "model_2": 2, "tie": "tie", "error": None}
_BATTLE_WINNER = {1: "a", 2: "b", "tie": "tie"}


def _question_id(record: dict, at: dict) -> str:
    value = record.get("question_id")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise RecordError("question_id", f"must be an integer or a non-empty string, got {describe_type(value)}", **at)
    return str(value)  # compared as text, so 81 and "81" are one question


def _name(record: dict, field: str, at: dict) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value:
        raise RecordError(field, f"must be a non-empty string, got {describe_type(value)}", **at)
    return value


def _turn(record: dict, at: dict) -> int:
    value = record.get("turn")
    if type(value) is not int or value < 1:
        raise RecordError("turn", f"must be a whole number from 1, got {value!r}", **at)
    return value


def _two_models(record: dict, first: str, second: str, at: dict) -> tuple[str, str]:
    a, b = _name(record, first, at), _name(record, second, at)
    if a == b:
        raise RecordError(second, f"names the same model as {first} ({a!r})", **at)
    return a, b


# ----------------------------------------------------------------------------- single-answer judgments

def single_judgments(path: str | os.PathLike, categories: Mapping[str, str] | None = None
                     ) -> dict[str, list[GradedItem]]:
    """model -> its graded items (id = question id), in file order. With `categories` (question id ->
    category, from the questions file) each item gets its category, and an unknown question is an error."""
    graded: dict[str, list[GradedItem]] = {}
    seen: dict[tuple, str] = {}
    for at, record in located_records(path):
        question, model, turn = _question_id(record, at), _name(record, "model", at), _turn(record, at)
        score = record.get("score")
        if not is_number(score) or not (score == -1 or 1 <= score <= 10):
            raise RecordError("score", f"must be a rating from 1 to 10, or -1 for none, got {score!r}", **at)
        if categories is not None and question not in categories:
            raise RecordError("question_id", f"{question!r} is not in the questions file", **at)
        key = (model, question, turn)
        if key in seen:
            raise RecordError("question_id", f"a second judgment of {model!r} on question {question} turn {turn} "
                                             f"(first at {seen[key]})", **at)
        seen[key] = f"{at['path']}:{at['line']}"
        failed = score == -1
        graded.setdefault(model, []).append(GradedItem(
            question, categories[question] if categories is not None else "all", turn,
            None if failed else float(score), failed, "no [[rating]] in the judge's reply (FastChat score -1)"
            if failed else None))
    return graded


# ----------------------------------------------------------------------------- pairwise judgments

def _games(record: dict, at: dict) -> list[tuple[int, int | str | None]]:
    """[(game, verdict in model_1/model_2 terms)]: games 1 and 2, or game 1 alone for a score comparison."""
    games = []
    for game in (1, 2):
        winner = record.get(f"g{game}_winner")
        if winner not in PAIR_WINNERS:
            raise RecordError(f"g{game}_winner", f"must be one of {', '.join(PAIR_WINNERS)}, got {winner!r}", **at)
        games.append((game, PAIR_WINNERS[winner]))
    if "m1_score" in record and "m2_score" in record:
        return games[:1]  # FastChat writes the one comparison of two ratings as both winners
    return games


def _pair_records(path: str | os.PathLike):
    for at, record in located_records(path):
        model_1, model_2 = _two_models(record, "model_1", "model_2", at)
        yield at, (_question_id(record, at), model_1, model_2, _turn(record, at)), _games(record, at)


def pair_predictions(path: str | os.PathLike, pairs: Sequence[LabelledPair]) -> ImportedPredictions:
    """Predictions for the gold pairs (from human judgments) that a pairwise judgment file covers."""
    index: dict[tuple, list[tuple[LabelledPair, bool]]] = {}
    for pair in pairs:
        if len(pair.key) == 4:  # (question, model of output_1, model of output_2, turn)
            question, model_a, model_b, turn = pair.key
            index.setdefault((question, model_a, model_b, turn), []).append((pair, False))
            index.setdefault((question, model_b, model_a, turn), []).append((pair, True))
    if not index:
        raise DataError(f"{path}: FastChat pairwise judgments are matched to MT-Bench human judgments by question, "
                        "models and turn; load such a file with --pairs (none of the loaded pairs has them)")
    predictions, records, unmatched = [], 0, 0
    for at, key, games in _pair_records(path):
        records += 1
        matches = index.get(key, [])
        unmatched += not matches
        where = f"{at['path']}:{at['line']}"
        for pair, model_1_second in matches:
            for game, verdict in games:
                model_1_first = game == 1  # game 1 shows model_1 as A
                order = "ab" if model_1_first != model_1_second else "ba"
                predictions.append(Prediction(pair.id, order, flipped(verdict) if model_1_second else verdict, where))
    if records and unmatched == records:
        raise DataError(f"{path}: none of its {records} judgments is about a loaded pair (same question, models and "
                        "turn); are these judgments of the same models and questions?")
    return ImportedPredictions(predictions, records, unmatched)


def pair_battles(path: str | os.PathLike) -> ImportedBattles:
    battles, records, failed = [], 0, 0
    for _, (_, model_1, model_2, _), games in _pair_records(path):
        records += 1
        for _, verdict in games:
            if verdict is None:
                failed += 1
            else:
                battles.append(Battle(model_1, model_2, _BATTLE_WINNER[verdict]))
    return ImportedBattles(battles, records, failed)


# ----------------------------------------------------------------------------- human judgments

def _human_label(record: dict, at: dict) -> int | str:
    winner = record.get("winner")
    if winner in ("model_a", "model_b"):
        return 1 if winner == "model_a" else 2
    if isinstance(winner, str) and "tie" in winner:
        return "tie"
    raise RecordError("winner", f'must be "model_a", "model_b" or a tie ("tie", "tie (bothbad)"), got {winner!r}', **at)


def _turn_messages(record: dict, field: str, turn: int, at: dict) -> tuple[str, str]:
    """The user message and the assistant's answer of `turn` in one side's conversation."""
    conversation = record.get(field)
    if not isinstance(conversation, list) or not all(isinstance(m, dict) for m in conversation):
        raise RecordError(field, f"must be a list of messages, got {describe_type(conversation)}", **at)
    by_role = {role: [m.get("content") for m in conversation if m.get("role") == role]
               for role in ("user", "assistant")}
    if len(by_role["user"]) < turn or len(by_role["assistant"]) < turn:
        raise RecordError(field, f"has no user message and answer for turn {turn}", **at)
    question, answer = by_role["user"][turn - 1], by_role["assistant"][turn - 1]
    if not isinstance(question, str) or not isinstance(answer, str):
        raise RecordError(field, f"turn {turn}: message contents must be strings", **at)
    return question, answer


def human_judgment_pairs(name: str, path: str | os.PathLike) -> list[LabelledPair]:
    """Each vote as a gold pair named "<name>-<index>" (index from 0), keyed by question, models and turn."""
    pairs = []
    for index, (at, record) in enumerate(located_records(path)):
        question, turn = _question_id(record, at), _turn(record, at)
        model_a, model_b = _two_models(record, "model_a", "model_b", at)
        label = _human_label(record, at)
        asked, answer_a = _turn_messages(record, "conversation_a", turn, at)
        asked_b, answer_b = _turn_messages(record, "conversation_b", turn, at)
        if asked_b != asked:
            raise RecordError("conversation_b", f"turn {turn} asks another question than conversation_a", **at)
        pairs.append(LabelledPair(f"{name}-{index}", name, asked, answer_a, answer_b, label, os.fspath(path), index,
                                  (question, model_a, model_b, turn)))
    return pairs


def human_battles(path: str | os.PathLike) -> ImportedBattles:
    battles, judges = [], Counter()
    for at, record in located_records(path):
        model_a, model_b = _two_models(record, "model_a", "model_b", at)
        battles.append(Battle(model_a, model_b, _BATTLE_WINNER[_human_label(record, at)]))
        judges[str(record.get("judge"))] += 1
    return ImportedBattles(battles, len(battles), 0, [f"votes by {len(judges)} judges"])
