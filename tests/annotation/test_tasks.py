import pytest

from alignkit.annotation.answers import AnswerError, canonical_answer, shown_order
from alignkit.annotation.tasks import make_tasks, parse_item, read_tasks
from alignkit.data.errors import RecordError
from tests.annotation.helpers import RUBRIC
from tests.helpers.files import write_jsonl


def test_kinds_are_inferred_and_prompts_become_messages():
    pair = parse_item({"prompt": "q", "responses": ["a", "b"]})
    ranking = parse_item({"prompt": "q", "responses": ["a", "b", "c"]})
    rating = parse_item({"prompt": "q", "responses": ["a"]})
    rubric = parse_item({"prompt": "q", "responses": ["a", "b"], "rubric": RUBRIC})
    assert (pair.kind, ranking.kind, rating.kind, rubric.kind) == ("pairwise", "ranking", "rating", "rating")
    assert pair.prompt == [{"role": "user", "content": "q"}]
    assert rating.scale == (1, 10) and rubric.scale == (1, 5) and rubric.rubric == RUBRIC
    # The default id depends on the content alone.
    assert pair.id == parse_item({"prompt": "q", "responses": ["a", "b"]}).id != ranking.id


def test_an_item_round_trips_through_its_record():
    item = parse_item({"id": 7, "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                       "responses": [{"content": "a", "model": "m"}, "b"], "question": "Better?"})
    assert parse_item(item.to_record()) == item
    assert item.id == "7" and item.responses[0].model == "m" and item.responses[1].model is None


@pytest.mark.parametrize("record, field", [
    ({"prompt": "q", "responses": ["a"], "kind": "pairwise"}, "responses"),
    ({"prompt": "q", "responses": ["a"], "kind": "ranking"}, "responses"),
    ({"prompt": "q", "responses": ["a", "b"], "kind": "vote"}, "kind"),
    ({"prompt": "q", "responses": []}, "responses"),
    ({"prompt": "q", "responses": ["x"] * 11}, "responses"),
    ({"prompt": "q", "responses": [3, "b"]}, "responses[0]"),
    ({"prompt": "q", "responses": [{"content": "a", "model": ""}, "b"]}, "responses[0].model"),
    ({"prompt": "q", "responses": ["a"], "rubric": ["only", "three", "levels"]}, "rubric"),
    ({"prompt": "q", "responses": ["a"], "scale": [5, 1]}, "scale"),
    ({"prompt": "q", "responses": ["a", "b"], "kind": "pairwise", "scale": [1, 5]}, "scale"),
    ({"prompt": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], "responses": ["a"]},
     "prompt"),
    ({"responses": ["a", "b"]}, "prompt"),
    ({"prompt": "q", "responses": ["a", "b"], "id": ""}, "id"),
])
def test_bad_items_name_the_field(record, field):
    with pytest.raises(RecordError) as error:
        parse_item(record)
    assert error.value.field == field


def test_read_tasks_names_file_and_line_of_a_repeated_id(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"id": "a", "prompt": "q", "responses": ["x", "y"]},
                                              {"id": "a", "prompt": "r", "responses": ["x", "y"]}])
    with pytest.raises(RecordError) as error:
        read_tasks(path)
    assert "t.jsonl:2" in str(error.value) and "already used" in str(error.value)


def test_shown_order_is_fixed_per_annotator_and_varies_between_them():
    assert shown_order(1, "alice", "q1", 4) == shown_order(1, "alice", "q1", 4)
    orders = {tuple(shown_order(1, name, "q1", 2)) for name in ("alice", "bob", "carol", "dan", "eve", "fay")}
    assert orders == {(0, 1), (1, 0)}
    # Over many items each side comes first about half the time.
    firsts = sum(shown_order(3, "alice", f"q{i}", 2)[0] for i in range(400))
    assert 160 < firsts < 240


def test_answers_map_shown_positions_back_to_the_task_file():
    pair = parse_item({"prompt": "q", "responses": ["a", "b"]})
    assert canonical_answer(pair, [1, 0], {"choice": "left"}) == {"choice": "2", "reason": ""}
    assert canonical_answer(pair, [1, 0], {"choice": "right", "reason": " r "}) == {"choice": "1", "reason": "r"}
    assert canonical_answer(pair, [0, 1], {"choice": "tie"})["choice"] == "tie"
    ranking = parse_item({"prompt": "q", "responses": ["a", "b", "c"]})
    # Shown: c, a, b. Best first by position: b (2), c (0), a (1).
    assert canonical_answer(ranking, [2, 0, 1], {"ranking": [2, 0, 1]}) == {"ranking": [1, 2, 0]}
    rating = parse_item({"prompt": "q", "responses": ["a", "b"], "rubric": RUBRIC})
    assert canonical_answer(rating, [1, 0], {"scores": [5, 2]}) == {"scores": [2, 5]}


@pytest.mark.parametrize("answer", [
    {"choice": "up"}, {"choice": "left", "reason": "x" * 2001}, "left",
])
def test_bad_pairwise_answers(answer):
    with pytest.raises(AnswerError):
        canonical_answer(parse_item({"prompt": "q", "responses": ["a", "b"]}), [0, 1], answer)


@pytest.mark.parametrize("kind_record, answer", [
    ({"responses": ["a", "b", "c"]}, {"ranking": [0, 0, 1]}),
    ({"responses": ["a", "b", "c"]}, {"ranking": [0, 1]}),
    ({"responses": ["a", "b", "c"]}, {"ranking": [True, 0, 2]}),
    ({"responses": ["a"], "rubric": RUBRIC}, {"scores": [6]}),
    ({"responses": ["a"], "rubric": RUBRIC}, {"scores": [2.5]}),
    ({"responses": ["a", "b"], "kind": "rating"}, {"scores": [2]}),
])
def test_bad_ranking_and_rating_answers(kind_record, answer):
    item = parse_item({"prompt": "q", **kind_record})
    with pytest.raises(AnswerError):
        canonical_answer(item, list(range(len(item.responses))), answer)


def test_make_tasks_pairs_two_models_outputs_by_prompt(tmp_path):
    base = write_jsonl(tmp_path / "base.jsonl", [
        {"messages": [{"role": "user", "content": "q1"}], "response": "b1", "model": "base"},
        {"messages": [{"role": "user", "content": "q2"}], "response": "b2", "model": "base"},
        {"messages": [{"role": "user", "content": "q3"}], "response": "b3", "model": "base"}])
    sft = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": "q2"}], "response": "s2", "model": "sft"},
        {"messages": [{"role": "user", "content": "q1"}], "response": "s1", "model": "sft"}])
    records, missing = make_tasks([base, sft])
    assert missing == 1
    items = [parse_item(r) for r in records]
    assert [(i.prompt[-1]["content"], [(r.content, r.model) for r in i.responses]) for i in items] == [
        ("q1", [("b1", "base"), ("s1", "sft")]), ("q2", [("b2", "base"), ("s2", "sft")])]
    assert all(i.kind == "pairwise" for i in items)


def test_make_tasks_ranks_samples_of_one_file(tmp_path):
    samples = write_jsonl(tmp_path / "n.jsonl", [
        {"messages": [{"role": "user", "content": "q"}], "response": "x", "responses": ["x", "y", "z"],
         "ranked": False, "model": "sft"}])
    records, _ = make_tasks([samples], kind="ranking")
    assert [r["content"] for r in records[0]["responses"]] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="use --kind ranking"):
        make_tasks([samples], kind="pairwise")
