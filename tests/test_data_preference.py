"""Preference pairs, rankings and feedback: layouts, prompt splitting, pair rules and errors."""
from __future__ import annotations

import pytest

from alignkit.data.errors import DataError, RecordError
from alignkit.data.preference import (Ranking, load_feedback, load_pairs, load_rankings, ranking_to_pairs,
                                      to_feedback, to_pair, to_ranking)
from alignkit.data.readers import DataSpec
from tests.test_data_readers import FILE_KINDS, UNIT_OF, split_for, write_records


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def as_tuple(pair):
    return pair.prompt, pair.chosen, pair.rejected


# Records of each pair layout, one layout per file so tables keep one type per column.
PAIR_LAYOUTS = {
    "strings": ({"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."},
                ([user("Sky colour?")], [bot("Blue.")], [bot("Green.")])),
    "explicit_messages": ({"prompt": [user("Sky colour?")], "chosen": [bot("Blue.")], "rejected": [bot("Green.")]},
                          ([user("Sky colour?")], [bot("Blue.")], [bot("Green.")])),
    "implicit": ({"chosen": [user("Hi"), bot("Hello"), user("Sky?"), bot("Blue.")],
                  "rejected": [user("Hi"), bot("Hello"), user("Sky?"), bot("Green.")]},
                 ([user("Hi"), bot("Hello"), user("Sky?")], [bot("Blue.")], [bot("Green.")])),
    # ultrafeedback_binarized: a string prompt, and chosen / rejected repeating it as conversations.
    "prompt_repeated": ({"prompt": "Sky?", "chosen": [user("Sky?"), bot("Blue.")],
                         "rejected": [user("Sky?"), bot("Green.")], "score_chosen": 8.0, "score_rejected": 3.5},
                        ([user("Sky?")], [bot("Blue.")], [bot("Green.")])),
}


@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("layout", list(PAIR_LAYOUTS))
def test_pair_layouts_from_every_file_type(tmp_path, layout, kind):
    record, expected = PAIR_LAYOUTS[layout]
    path = write_records(tmp_path, kind, [record, record])
    pairs, report = load_pairs(path, split=split_for(kind))
    assert [as_tuple(p) for p in pairs] == [expected, expected]
    assert [(p.source, p.line, p.unit) for p in pairs] == [(path, 1, UNIT_OF[kind]), (path, 2, UNIT_OF[kind])]
    assert report.kept == 2
    if layout == "prompt_repeated":
        assert pairs[0].margin == pytest.approx(4.5)


def test_implicit_prompt_stops_before_the_first_differing_assistant_turn():
    # Both share the first answer but differ after a different follow-up: the prompt is the first question only.
    pair = to_pair({"chosen": [user("q"), bot("a"), user("why?"), bot("because")],
                    "rejected": [user("q"), bot("a"), user("how?"), bot("somehow")]})
    assert pair.prompt == [user("q")]
    assert pair.chosen == [bot("a"), user("why?"), bot("because")]


BAD_PAIRS = [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected", "identical to chosen"),
    ({"chosen": [user("q"), bot("a")], "rejected": [user("q"), bot("a")]}, "rejected", "identical to chosen"),
    ({"prompt": "q", "chosen": "a"}, "rejected", "missing"),
    ({"chosen": "a", "rejected": "b"}, "prompt", "missing"),
    ({"chosen": [user("q1"), bot("a")], "rejected": [user("q2"), bot("b")]}, "chosen", "share no prompt"),
    ({"prompt": "q", "chosen": [user("other"), bot("a")], "rejected": "b"}, "chosen", "does not start with the prompt"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "chosen", "assistant turn is empty"),
    ({"prompt": [user("q"), bot("a")], "chosen": "b", "rejected": "c"}, "prompt[1].role", "must end with a user turn"),
    ({"prompt": "q", "chosen": [{"role": "bot", "content": "a"}], "rejected": "b"}, "chosen[0].role", "unknown role"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 2, "score_rejected": 2},
     "score_chosen", "not higher than score_rejected"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "lots"}, "margin", "expected a finite number"),
]


@pytest.mark.parametrize("record,field,reason", BAD_PAIRS)
def test_bad_pairs_name_the_field(record, field, reason):
    with pytest.raises(RecordError) as caught:
        to_pair(record)
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_bad_pair_in_a_file_names_the_line_and_skip_mode_lists_it(tmp_path):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = write_records(tmp_path, "jsonl", [good, {"prompt": "q", "chosen": "a", "rejected": "a"}, good])
    with pytest.raises(RecordError, match=f"^{path}:2: rejected: identical to chosen$"):
        load_pairs(path)
    pairs, report = load_pairs(path, skip_bad=True)
    assert [p.line for p in pairs] == [1, 3]
    assert (report.kept, report.skipped, str(report.listed[0])) == (2, 1, f"{path}:2: rejected: identical to chosen")


# ---- rankings ----

SCORED = {"prompt": "Pick", "responses": [{"text": "a", "score": 2}, {"content": "b", "score": 5},
                                          {"messages": [bot("c")], "score": 5}, {"text": "d", "score": 1},
                                          {"text": "e", "score": 3}]}


def pair_names(pairs):
    return {(p.chosen[0]["content"], p.rejected[0]["content"]) for p in pairs}


def test_scored_ranking_keeps_scores_and_orders_best_first():
    ranking = to_ranking(SCORED)
    assert ranking.scores == [2, 5, 5, 1, 3]
    assert [ranking.responses[i][0]["content"] for i in ranking.best_first()] == ["b", "c", "e", "a", "d"]


@pytest.mark.parametrize("rule,threshold,expected", [
    # scores: a=2, b=5, c=5, d=1, e=3; b and c tie, so they never face each other.
    ("all_pairs", 0.0, {("b", "a"), ("b", "d"), ("b", "e"), ("c", "a"), ("c", "d"), ("c", "e"),
                        ("e", "a"), ("e", "d"), ("a", "d")}),
    ("best_vs_rest", 0.0, {("b", "a"), ("b", "d"), ("b", "e"), ("c", "a"), ("c", "d"), ("c", "e")}),
    ("best_vs_worst", 0.0, {("b", "d"), ("c", "d")}),
    ("margin", 1.5, {("b", "a"), ("b", "d"), ("b", "e"), ("c", "a"), ("c", "d"), ("c", "e"), ("e", "d")}),
    ("margin", 2.0, {("b", "a"), ("b", "d"), ("c", "a"), ("c", "d")}),  # strictly above the threshold
])
def test_pair_rules_on_scores(rule, threshold, expected):
    pairs = ranking_to_pairs(to_ranking(SCORED), rule, threshold=threshold)
    assert pair_names(pairs) == expected and len(pairs) == len(expected)
    scores = dict(zip("abcde", [2, 5, 5, 1, 3]))
    assert all(p.margin == scores[p.chosen[0]["content"]] - scores[p.rejected[0]["content"]] for p in pairs)


def test_pair_rules_on_an_ordered_list():
    ranking = to_ranking({"prompt": "Pick", "responses": ["first", [bot("second")], "third"]})
    assert ranking.scores is None
    assert pair_names(ranking_to_pairs(ranking, "all_pairs")) == {("first", "second"), ("first", "third"),
                                                                   ("second", "third")}
    assert pair_names(ranking_to_pairs(ranking, "best_vs_rest")) == {("first", "second"), ("first", "third")}
    assert pair_names(ranking_to_pairs(ranking, "best_vs_worst")) == {("first", "third")}
    assert all(p.margin is None for p in ranking_to_pairs(ranking, "all_pairs"))
    with pytest.raises(RecordError, match="margin rule needs scores"):
        ranking_to_pairs(ranking, "margin", threshold=1)


def test_all_tied_scores_make_no_pairs():
    tied = to_ranking({"prompt": "q", "responses": [{"text": "x", "score": 1}, {"text": "y", "score": 1}]})
    for rule in ("all_pairs", "best_vs_rest", "best_vs_worst", "margin"):
        assert ranking_to_pairs(tied, rule) == []


@pytest.mark.parametrize("rule,threshold", [("nearest", 0.0), ("all_pairs", 1.0), ("margin", -1.0)])
def test_bad_rule_arguments(rule, threshold):
    with pytest.raises(ValueError):
        ranking_to_pairs(to_ranking(SCORED), rule, threshold=threshold)


BAD_RANKINGS = [
    ({"prompt": "q", "responses": ["only"]}, "responses", "at least 2 responses"),
    ({"prompt": "q", "responses": [{"text": "a", "score": 1}, {"text": "b"}]}, "responses[1].score",
     "missing (other responses have scores)"),
    ({"prompt": "q", "responses": [{"text": "a", "score": True}, {"text": "b", "score": 0}]}, "responses[0].score",
     "expected a finite number"),
    ({"prompt": "q", "responses": [{"text": "a", "content": "b", "score": 1}, "c"]}, "responses[0]",
     "exactly one of text, content or messages"),
    ({"prompt": "q", "responses": ["same", "other", "same"]}, "responses[2]", "identical to responses[0]"),
    ({"prompt": "q", "responses": [{"text": "a", "score": 3}, {"text": "a", "score": 1}]}, "responses[1]",
     "ranked differently"),
    ({"prompt": "q", "responses": ["a", [user("b")]]}, "responses[1][0].role", "must start with an assistant turn"),
    ({"responses": ["a", "b"]}, "prompt", "missing"),
]


@pytest.mark.parametrize("record,field,reason", BAD_RANKINGS)
def test_bad_rankings_name_the_field(record, field, reason):
    with pytest.raises(RecordError) as caught:
        to_ranking(record)
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_equal_responses_with_equal_scores_are_a_harmless_tie():
    ranking = to_ranking({"prompt": "q", "responses": [{"text": "a", "score": 2}, {"text": "a", "score": 2},
                                                       {"text": "b", "score": 1}]})
    assert pair_names(ranking_to_pairs(ranking, "all_pairs")) == {("a", "b")}


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "disk"])
def test_rankings_from_files_become_pairs_and_ties_are_reported(tmp_path, kind):
    records = [SCORED, {"prompt": "tie", "responses": [{"text": "x", "score": 1}, {"text": "y", "score": 1}]}]
    path = write_records(tmp_path, kind, records)
    pairs, report = load_pairs(path, rule="best_vs_worst")  # ties are not errors: not raised, but reported
    assert pair_names(pairs) == {("b", "d"), ("c", "d")} and {p.line for p in pairs} == {1}
    assert (report.kept, report.skipped) == (1, 1)
    assert report.listed[0].line == 2 and "no pair under rule 'best_vs_worst'" in report.listed[0].reason
    rankings, _ = load_rankings(path)
    assert [r.scores for r in rankings] == [[2, 5, 5, 1, 3], [1, 1]]


def test_a_file_of_only_ties_is_an_error(tmp_path):
    path = write_records(tmp_path, "jsonl", [{"prompt": "q", "responses": [{"text": "x", "score": 1},
                                                                          {"text": "y", "score": 1}]}])
    with pytest.raises(DataError, match="all 1 records were skipped"):
        load_pairs(path)


def test_pair_records_load_as_two_item_rankings(tmp_path):
    path = write_records(tmp_path, "jsonl", [PAIR_LAYOUTS["strings"][0]])
    rankings, _ = load_rankings(path)
    assert rankings == [Ranking([user("Sky colour?")], [[bot("Blue.")], [bot("Green.")]], None, path, 1, "line")]


# ---- feedback ----

@pytest.mark.parametrize("label,desirable", [(True, True), (False, False), (1, True), (0, False),
                                             ("good", True), ("BAD", False), ("True", True), ("0", False)])
def test_feedback_labels(label, desirable):
    item = to_feedback({"prompt": "q", "completion": "a", "label": label})
    assert (item.prompt, item.completion, item.desirable) == ([user("q")], [bot("a")], desirable)


@pytest.mark.parametrize("record,field,reason", [
    ({"prompt": "q", "completion": "a", "label": "meh"}, "label", "expected true/false"),
    ({"prompt": "q", "completion": "a", "label": 2}, "label", "expected true/false"),
    ({"prompt": "q", "completion": "a"}, "label", "missing"),
    ({"prompt": "q", "completion": " ", "label": 1}, "completion", "assistant turn is empty"),
])
def test_bad_feedback_names_the_field(record, field, reason):
    with pytest.raises(RecordError) as caught:
        to_feedback(record)
    assert (caught.value.field, reason in caught.value.reason) == (field, True)


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_feedback_from_every_file_type(tmp_path, kind):
    records = [{"prompt": "q", "completion": "yes", "label": True}, {"prompt": "q", "completion": "no", "label": False}]
    path = write_records(tmp_path, kind, records)
    items, report = load_feedback(path, split=split_for(kind))
    assert [(i.completion[0]["content"], i.desirable, i.line) for i in items] == [("yes", True, 1), ("no", False, 2)]


def test_pairs_unpair_into_feedback_and_formats_are_enforced(tmp_path):
    path = write_records(tmp_path, "jsonl", [PAIR_LAYOUTS["strings"][0]], name="pairs")
    items, _ = load_feedback(path)
    assert [(i.completion, i.desirable) for i in items] == [([bot("Blue.")], True), ([bot("Green.")], False)]
    feedback = write_records(tmp_path, "jsonl", [{"prompt": "q", "completion": "a", "label": 1}], name="kto")
    with pytest.raises(RecordError, match=r"kto.jsonl:1: a feedback record cannot be used here; expected pair or ranking"):
        load_pairs(feedback)
    with pytest.raises(DataError, match="unknown preference format 'dpo'"):
        load_pairs(DataSpec(path, format="dpo"))
