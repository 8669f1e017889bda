"""Preference pairs, rankings and feedback: layouts, prompt splitting, pair rules and errors."""
from __future__ import annotations

import pytest

from alignkit.data.errors import DataError, RecordError
from alignkit.data.preference import (Ranking, load_feedback, load_pairs, load_rankings, ranking_to_pairs,
                                      to_feedback, to_pair, to_ranking)
from alignkit.data.readers import DataSpec
from tests.helpers.data import FILE_KINDS, UNIT_OF, assert_record_error, bot, split_for, user, write_records


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
    assert_record_error(to_pair, record, field, reason)


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
    ranking = to_ranking({"prompt": "Pick", "responses": ["first", [bot("second")], "third"], "ranked": True})
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
    ({"prompt": "q", "responses": ["same", "other", "same"], "ranked": True}, "responses[2]", "identical to responses[0]"),
    ({"prompt": "q", "responses": [{"text": "a", "score": 3}, {"text": "a", "score": 1}]}, "responses[1]",
     "ranked differently"),
    ({"prompt": "q", "responses": ["a", [user("b")]]}, "responses[1][0].role", "must start with an assistant turn"),
    ({"responses": ["a", "b"]}, "prompt", "missing"),
]


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


# ---- samples scored by a reward model (`generate --n` then `score`) ----

def generated(texts, **extra):
    """A record as `alignkit generate --n` writes it: samples in sampling order, the first also as `response`."""
    return {"source": "prompts.jsonl:1", "messages": [user("Pick")], "prompt": "Pick", "response": texts[0],
            "finish_reason": "stop", "model": "m", "responses": list(texts), "ranked": False, **extra}


# Sample 0 scores lowest, so reading the samples as ranked would pick every pair the wrong way round.
SAMPLES = ["s0", "s1", "s2", "s3"]
REWARDS = [0.1, 2.5, 1.0, 2.5]


@pytest.mark.parametrize("rule,threshold,expected", [
    ("all_pairs", 0.0, {("s1", "s2"), ("s1", "s0"), ("s3", "s2"), ("s3", "s0"), ("s2", "s0")}),
    ("best_vs_rest", 0.0, {("s1", "s2"), ("s1", "s0"), ("s3", "s2"), ("s3", "s0")}),
    ("best_vs_worst", 0.0, {("s1", "s0"), ("s3", "s0")}),
    ("margin", 1.0, {("s1", "s2"), ("s1", "s0"), ("s3", "s2"), ("s3", "s0")}),
])
def test_rewards_order_generated_samples_for_every_rule(tmp_path, rule, threshold, expected):
    path = write_records(tmp_path, "jsonl", [generated(SAMPLES, rewards=REWARDS)])
    pairs, _ = load_pairs(path, rule=rule, threshold=threshold)
    assert pair_names(pairs) == expected and len(pairs) == len(expected)
    reward = dict(zip(SAMPLES, REWARDS))
    assert all(p.margin == pytest.approx(reward[p.chosen[0]["content"]] - reward[p.rejected[0]["content"]])
               for p in pairs)
    rankings, _ = load_rankings(path)
    assert [rankings[0].responses[i][0]["content"] for i in rankings[0].best_first()] == ["s1", "s3", "s2", "s0"]


def test_messages_are_the_prompt_of_a_generated_record():
    # generate keeps a system turn in `messages`; its `prompt` is only the last user turn.
    system = {"role": "system", "content": "Be brief."}
    ranking = to_ranking(generated(["a", "b"], messages=[system, user("Pick")], rewards=[0, 1]))
    assert ranking.prompt == [system, user("Pick")]


def test_unscored_samples_are_an_error_not_a_ranking(tmp_path):
    path = write_records(tmp_path, "jsonl", [generated(SAMPLES)])
    with pytest.raises(RecordError, match=f"^{path}:1: responses: unranked samples"):
        load_pairs(path, rule="best_vs_worst")
    # Without scores, only an explicit `ranked: true` makes a list a ranking: files written before
    # generate said `ranked: false`, and any other unmarked list, are errors rather than guesses.
    for unmarked in ({k: v for k, v in generated(SAMPLES).items() if k != "ranked"},
                     {"prompt": "q", "responses": ["a", "b"]}):
        with pytest.raises(RecordError) as caught:
            to_ranking(unmarked)
        assert caught.value.field == "responses" and "ranked: true" in caught.value.reason


def test_ranked_true_states_the_order_explicitly():
    ranking = to_ranking({**generated(["best", "worst"]), "ranked": True})
    assert ranking.scores is None and pair_names(ranking_to_pairs(ranking, "best_vs_worst")) == {("best", "worst")}
    csv_cell = to_ranking({"prompt": "q", "responses": ["best", "worst"], "ranked": "TRUE"})
    assert csv_cell.scores is None


BAD_SCORED_SAMPLES = [
    (generated(["a", "b"], rewards=[1.0]), "rewards", "1 rewards for 2 responses"),
    (generated(["a", "b"], rewards=[1.0, "high"]), "rewards[1]", "expected a finite number"),
    (generated(["a", "b"], rewards=3.0), "rewards", "a list of numbers"),
    ({"prompt": "q", "responses": [{"text": "a", "score": 1}, {"text": "b", "score": 2}], "rewards": [2, 1]},
     "rewards", "one or the other"),
    ({**generated(["a", "b"], rewards=[1, 2]), "ranked": True}, "ranked", "scores, which decide the order"),
    ({"prompt": "q", "responses": ["a", "b"], "ranked": "yes"}, "ranked", "expected true or false"),
]


@pytest.mark.parametrize("record,field,reason", BAD_RANKINGS + BAD_SCORED_SAMPLES)
def test_bad_rankings_name_the_field(record, field, reason):
    assert_record_error(to_ranking, record, field, reason)


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
