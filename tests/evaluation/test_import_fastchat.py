"""FastChat's MT-Bench files read by alignkit: single-answer ratings (eval grade --judgments), pairwise
judgments (meta-eval predictions against MT-Bench human judgments, leaderboard battles) and human votes.

Files are written here in FastChat's layouts (gen_judgment.py's records, the human-judgment records that
compute_agreement.py reads); expected numbers are worked by hand from the records."""
from __future__ import annotations

import json

import pytest

from alignkit.cli import main
from alignkit.data.errors import DataError, RecordError
from alignkit.evaluation.grading import summarise
from alignkit.evaluation.importers import (
    detect_format, load_battles_file, load_graded_file, load_pairs, load_predictions_file,
)
from alignkit.evaluation.meta_eval import evaluate_predictions
from alignkit.judges import SINGLE_SCALE
from tests.helpers.files import read_jsonl, write_jsonl


def single(question, model, score, turn=1):
    return {"question_id": question, "model": model, "judge": ["gpt-4", "single-v1" if turn == 1 else
                                                              "single-v1-multi-turn"],
            "user_prompt": "[Instruction] ...", "judgment": f"Fine. Rating: [[{score}]]", "score": score, "turn": turn,
            "tstamp": 1689492824.9}


SINGLE = [single(81, "alpha", 8), single(82, "alpha", 6), single(83, "alpha", -1), single(81, "alpha", 7, 2),
          single(82, "alpha", 9.5, 2), single(83, "alpha", 4, 2),
          single(81, "beta", 10), single(82, "beta", 3), single(83, "beta", 5), single(81, "beta", 2, 2)]


def test_single_ratings_give_fastchat_means_with_failures_left_out_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "gpt-4_single.jsonl", SINGLE)
    assert detect_format(path) == "fastchat-single"
    graded = load_graded_file(path)
    alpha, beta = summarise(SINGLE_SCALE, graded["alpha"]), summarise(SINGLE_SCALE, graded["beta"])
    # show_result.py drops score -1 before every mean: alpha turn 1 is (8 + 6) / 2
    assert alpha.per_turn[1].mean == pytest.approx(7.0) and alpha.per_turn[1].n_failed == 1
    assert alpha.per_turn[2].mean == pytest.approx((7 + 9.5 + 4) / 3)
    assert alpha.overall.mean == pytest.approx((8 + 6 + 7 + 9.5 + 4) / 5) and alpha.overall.n == 6
    assert beta.per_turn[1].mean == pytest.approx(6.0) and beta.per_turn[2].mean == pytest.approx(2.0)
    assert beta.overall.mean == pytest.approx(5.0) and beta.overall.n_failed == 0
    failed = [item for item in graded["alpha"] if item.failed]
    assert [(item.id, item.turn, item.score) for item in failed] == [("83", 1, None)]
    assert "score -1" in failed[0].failure


def questions_file(tmp_path):
    return write_jsonl(tmp_path / "question.jsonl", [
        {"question_id": 81, "category": "writing", "turns": ["q", "q2"]},
        {"question_id": 82, "category": "writing", "turns": ["q", "q2"]},
        {"question_id": 83, "category": "math", "turns": ["q", "q2"]}])


def test_eval_grade_judgments_cli_tables_categories_and_grades(tmp_path, capsys):
    path = write_jsonl(tmp_path / "gpt-4_single.jsonl", SINGLE)
    out = tmp_path / "grade"
    code = main(["eval", "grade", "--judgments", path, "--questions", questions_file(tmp_path), "--out", str(out),
                 "--report"])
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    overall, per_category = document["sections"]["tables"]
    assert overall["columns"] == ["model", "turn 1", "turn 2", "average", "graded", "failed"]
    # best average first: alpha 6.9, beta 5.0
    assert [row[0] for row in overall["rows"]] == ["alpha", "beta"]
    assert overall["rows"][0][1:] == pytest.approx([7.0, 20.5 / 3, 34.5 / 5, 5, 1])
    assert per_category["columns"] == ["model", "math", "writing"]
    # alpha: math has 83 turn 1 (failed) and turn 2 (4); writing 8, 6, 7, 9.5
    assert per_category["rows"][0] == ["alpha", pytest.approx(4.0), pytest.approx(30.5 / 4)]
    assert document["meta"]["n_failed"] == 1 and (out / "report.html").is_file()
    rows = read_jsonl(out / "grades.jsonl")
    assert len(rows) == 10 and rows[2] == {"model": "alpha", "id": "83", "category": "math", "turn": 1,
                                           "score": None, "failure": rows[2]["failure"]}
    assert "alpha" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    ({"score": 11}, "score: must be a rating from 1 to 10, or -1"),
    ({"turn": 0}, "turn: must be a whole number from 1"),
    ({"model": ""}, "model: must be a non-empty string"),
    ({"question_id": 99}, "question_id: '99' is not in the questions file"),
])
def test_bad_single_records_are_named(tmp_path, capsys, change, message):
    path = write_jsonl(tmp_path / "j.jsonl", [SINGLE[0], {**SINGLE[1], **change}])
    code = main(["eval", "grade", "--judgments", path, "--questions", questions_file(tmp_path),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"j.jsonl:2: {message}" in err and "Traceback" not in err


def test_single_ratings_refuse_duplicates_and_other_uses(tmp_path, capsys):
    twice = write_jsonl(tmp_path / "twice.jsonl", [SINGLE[0], SINGLE[0]])
    with pytest.raises(RecordError, match=r"twice.jsonl:2: .*a second judgment of 'alpha' on question 81 turn 1"):
        load_graded_file(twice)
    path = write_jsonl(tmp_path / "gpt-4_single.jsonl", SINGLE)
    code = main(["eval", "grade", "--judgments", path, "--answers", path, "--out", str(tmp_path / "o")])
    assert code == 2 and "--answers has no use with it" in capsys.readouterr().err
    gold = write_jsonl(tmp_path / "human.jsonl", [vote(81, "alpha", "beta", "model_a")])
    with pytest.raises(DataError, match="FastChat single-answer ratings .* which are not pairwise verdicts"):
        load_predictions_file(path, load_pairs([gold]))
    with pytest.raises(DataError, match="not battles"):
        load_battles_file(path)


# ----------------------------------------------------------------------------- pairwise and human judgments

def conversation(question, model, turns=2):
    messages = []
    for turn in range(1, turns + 1):
        messages += [{"role": "user", "content": f"question {question} turn {turn}"},
                     {"role": "assistant", "content": f"{model} answers {question}.{turn}"}]
    return messages


def vote(question, model_a, model_b, winner, turn=1, judge="expert_0"):
    return {"question_id": question, "model_a": model_a, "model_b": model_b, "winner": winner, "judge": judge,
            "conversation_a": conversation(question, model_a), "conversation_b": conversation(question, model_b),
            "turn": turn}


def pair(question, model_1, model_2, g1, g2, turn=1, **extra):
    return {"question_id": question, "model_1": model_1, "model_2": model_2, "g1_winner": g1, "g2_winner": g2,
            "judge": ["gpt-4", "pair-v2"], "g1_user_prompt": "...", "g1_judgment": "[[A]]", "g2_user_prompt": "...",
            "g2_judgment": "[[B]]", "turn": turn, "tstamp": 1.0, **extra}


def test_human_votes_become_gold_pairs_of_their_turn(tmp_path):
    path = write_jsonl(tmp_path / "human.jsonl", [vote(81, "alpha", "beta", "model_b", turn=2),
                                                   vote(81, "alpha", "beta", "tie (bothbad)", judge="expert_1")])
    assert detect_format(path) == "mt-bench-human"
    first, second = load_pairs([("h", path)])
    assert (first.id, first.input, first.output_1, first.output_2, first.label) == (
        "h-0", "question 81 turn 2", "alpha answers 81.2", "beta answers 81.2", 2)
    assert first.key == ("81", "alpha", "beta", 2) and second.label == "tie"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**vote(81, "alpha", "beta", "model_a"),
                                                "conversation_b": conversation(82, "beta")}])
    with pytest.raises(RecordError, match="bad.jsonl:1: conversation_b: turn 1 asks another question"):
        load_pairs([bad])
    short = write_jsonl(tmp_path / "short.jsonl", [vote(81, "alpha", "beta", "model_a", turn=3)])
    with pytest.raises(RecordError, match="conversation_a: has no user message and answer for turn 3"):
        load_pairs([short])
    odd = write_jsonl(tmp_path / "odd.jsonl", [vote(81, "alpha", "beta", "alpha")])
    with pytest.raises(RecordError, match="winner: must be"):
        load_pairs([odd])


def test_pair_judgments_map_games_to_orders_and_outputs(tmp_path):
    gold = write_jsonl(tmp_path / "human.jsonl", [
        vote(81, "alpha", "beta", "model_a"),  # h-0: output_1 = alpha
        vote(81, "beta", "alpha", "model_b", judge="expert_1"),  # h-1: the same question, sides the other way
        vote(82, "alpha", "beta", "model_b", turn=2)])  # h-2
    pairs = load_pairs([("h", gold)])
    judged = write_jsonl(tmp_path / "gpt-4_pair.jsonl", [
        pair(81, "alpha", "beta", "model_1", "model_2"),  # game 1: alpha shown first, alpha wins; game 2: beta
        pair(82, "beta", "alpha", "tie", "error", turn=2),  # model_1 is output_2 of h-2
        pair(83, "alpha", "beta", "model_1", "model_1"),  # nobody voted on question 83
        pair(82, "alpha", "beta", "model_2", "model_2", turn=1, m1_score=3, m2_score=8)])  # no vote on turn 1
    assert detect_format(judged) == "fastchat-pair"
    imported = load_predictions_file(judged, pairs)
    got = sorted((p.id, p.order, p.verdict) for p in imported.predictions)
    assert got == [("h-0", "ab", 1), ("h-0", "ba", 2),  # game 1 shows output_1 (alpha) first
                   ("h-1", "ab", 1), ("h-1", "ba", 2),  # h-1's output_1 is beta: game 2 shows it first
                   ("h-2", "ab", None), ("h-2", "ba", "tie")]  # game 1 shows beta (output_2) first
    assert (imported.records, imported.unmatched) == (4, 2)
    result = evaluate_predictions(pairs, imported.predictions, "gpt-4")
    # h-0 (label 1): ab right, ba wrong; h-1 (label 2 = alpha): ab wrong (1 = beta), ba right; h-2: both wrong
    assert result.accuracy == {"ab": pytest.approx(1 / 3), "ba": pytest.approx(1 / 3)}
    assert result.n_failures == 1


def test_pair_judgments_need_matching_gold(tmp_path):
    judged = write_jsonl(tmp_path / "gpt-4_pair.jsonl", [pair(83, "alpha", "beta", "model_1", "model_1")])
    gold = write_jsonl(tmp_path / "human.jsonl", [vote(81, "alpha", "beta", "model_a")])
    with pytest.raises(DataError, match="none of its 1 judgments is about a loaded pair"):
        load_predictions_file(judged, load_pairs([gold]))
    llmbar = tmp_path / "dataset.json"
    llmbar.write_text(json.dumps([{"input": "i", "output_1": "a", "output_2": "b", "label": 1}]))
    with pytest.raises(DataError, match="load such a file with --pairs"):
        load_predictions_file(judged, load_pairs([llmbar]))
    bad = write_jsonl(tmp_path / "bad.jsonl", [pair(81, "alpha", "beta", "A", "model_1")])
    with pytest.raises(RecordError, match="bad.jsonl:1: g1_winner: must be one of model_1, model_2, tie, error"):
        load_battles_file(bad)


def test_meta_eval_cli_scores_pair_judgments_against_human_votes(tmp_path, capsys):
    gold = write_jsonl(tmp_path / "human.jsonl", [vote(81, "alpha", "beta", "model_a"),
                                                   vote(81, "alpha", "beta", "model_b", judge="expert_1")])
    judged = write_jsonl(tmp_path / "gpt-4_pair.jsonl", [pair(81, "alpha", "beta", "model_1", "model_1"),
                                                          pair(90, "alpha", "beta", "tie", "tie")])
    out = tmp_path / "me"
    assert main(["meta-eval", "--pairs", f"human={gold}", "--predictions", judged, "--out", str(out)]) == 0
    document = json.loads((out / "results.json").read_text())
    row = document["sections"]["strategy_comparison"][0]
    # each vote is scored: alpha chosen in both orders is right on the first vote, wrong on the second
    assert row["strategy"] == "gpt-4_pair" and row["accuracy_by_order"] == {"ab": 0.5, "ba": 0.5}
    assert document["details"]["records_about_no_loaded_pair"] == {judged: {"records": 2, "about_no_loaded_pair": 1}}
    assert "1 of its 2 judgments are about no loaded pair" in capsys.readouterr().out


def test_leaderboard_reads_pair_judgments_and_human_votes(tmp_path, capsys):
    judged = write_jsonl(tmp_path / "gpt-4_pair.jsonl", [
        pair(81, "alpha", "beta", "model_1", "model_1"), pair(82, "alpha", "beta", "model_1", "error"),
        pair(83, "beta", "gamma", "tie", "model_2"), pair(84, "alpha", "gamma", "model_2", "model_2", m1_score=2,
                                                         m2_score=9)])
    imported = load_battles_file(judged)
    assert [(b.model_a, b.model_b, b.winner) for b in imported.battles] == [
        ("alpha", "beta", "a"), ("alpha", "beta", "a"), ("alpha", "beta", "a"), ("beta", "gamma", "tie"),
        ("beta", "gamma", "b"), ("alpha", "gamma", "b")]
    assert (imported.records, imported.failed) == (4, 1)
    out = tmp_path / "lb"
    assert main(["leaderboard", "--battles", judged, "--out", str(out), "--bootstrap", "20"]) == 0
    document = json.loads((out / "results.json").read_text())
    assert document["meta"]["n_battles"] == 6
    assert document["details"]["failures"]["n_failed"] == 1 and document["details"]["failures"]["n_judgments"] == 7
    printed = capsys.readouterr().out
    assert "4 records, 6 battles, 1 judgments without a verdict" in printed
    votes = write_jsonl(tmp_path / "human.jsonl", [vote(81, "alpha", "beta", "model_b"),
                                                    vote(82, "beta", "alpha", "tie", judge="expert_3")])
    humans = load_battles_file(votes, "mt-bench-human")
    assert [(b.model_a, b.model_b, b.winner) for b in humans.battles] == [("alpha", "beta", "b"),
                                                                          ("beta", "alpha", "tie")]
    assert humans.notes == ["votes by 2 judges"]
