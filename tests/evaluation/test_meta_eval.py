"""Meta-evaluation of judges on LLMBar-format pairs: loading, scoring maths, predictions files, judge runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alignkit.data.errors import DataError, RecordError
from alignkit.evaluation.meta_eval import (LabelledPair, Prediction, cohen_kappa, evaluate_judge, evaluate_predictions,
                                           load_llmbar, load_predictions, score_verdicts, split_name)
from alignkit.generation.backend import Completion
from alignkit.judges import JudgeConfig
from tests.helpers.files import write_jsonl


class ScriptedBackend:
    def __init__(self, respond):
        self.respond = respond
        self.model_id = "scripted"
        self.prompts: list[str] = []

    def chat(self, conversations, params):
        self.prompts.extend(conversation[-1]["content"] for conversation in conversations)
        return [[Completion(self.respond(conversation[-1]["content"]))] for conversation in conversations]

    def complete(self, prompts, params):
        raise AssertionError("judges must use chat")


def block(prompt: str, name: str) -> str:
    return re.search(rf"\[{name} begins\]\n(.*?)\n\[{name} ends\]", prompt, re.S).group(1)


def oracle_for(pairs):
    """A judge that knows the gold output of every pair."""
    gold = {(p.input, p.output_1 if p.label == 1 else p.output_2) for p in pairs}
    return lambda prompt: ("Verdict: A" if (block(prompt, "Instruction"), block(prompt, "Output A")) in gold
                           else "Verdict: B")


def pair(pair_id: str, label: int, source: str = "set") -> LabelledPair:
    return LabelledPair(pair_id, source, f"instruction {pair_id}", f"one {pair_id}", f"two {pair_id}", label)


# ---------------------------------------------------------------- loading

def test_load_shared_llmbar(shared_data):
    natural, neighbor = f"{shared_data}/llmbar/natural.json", f"{shared_data}/llmbar/adversarial_neighbor.json"
    pairs = load_llmbar([("natural", natural), ("adversarial_neighbor", neighbor)])
    assert len(pairs) == 234
    assert pairs[0].id == "natural-0" and pairs[100].id == "adversarial_neighbor-0"
    assert {p.source for p in pairs} == {"natural", "adversarial_neighbor"}
    assert (pairs[100].file, pairs[100].index) == (neighbor, 0)
    raw = json.loads(Path(shared_data, "llmbar", "natural.json").read_text())
    assert [p.label for p in pairs[:100]] == [r["label"] for r in raw]
    # Unnamed, a file is named by its path (normalised), not by its stem.
    assert load_llmbar(natural)[3].id == f"{natural}-3"


def test_two_files_with_one_stem_load_together_named_by_path(tmp_path, monkeypatch):
    for subset in ("Natural", "Adversarial/Neighbor"):
        (tmp_path / subset).mkdir(parents=True)
        (tmp_path / subset / "dataset.json").write_text(json.dumps([GOOD_PAIR, {**GOOD_PAIR, "label": 2}]))
    monkeypatch.chdir(tmp_path)
    pairs = load_llmbar(["./Natural//dataset.json", "Adversarial/Neighbor/dataset.json"])
    assert [p.id for p in pairs] == ["Natural/dataset.json-0", "Natural/dataset.json-1",
                                     "Adversarial/Neighbor/dataset.json-0", "Adversarial/Neighbor/dataset.json-1"]
    assert sorted(score_verdicts(pairs, {p.id: {"ab": 1} for p in pairs}).per_source) == [
        "Adversarial/Neighbor/dataset.json", "Natural/dataset.json"]
    with pytest.raises(DataError, match=r"Neighbor/dataset.json: its name 'x' is already the name of Natural"):
        load_llmbar([("x", "Natural/dataset.json"), ("x", "Adversarial/Neighbor/dataset.json")])


def test_split_name(tmp_path):
    assert split_name("natural=data/a.json") == ("natural", "data/a.json")
    assert split_name("data/a.json") == (None, "data/a.json")
    odd = tmp_path / "a=b.json"
    odd.write_text("[]")
    assert split_name(str(odd)) == (None, str(odd))  # an existing file is a path, "=" or not
    with pytest.raises(DataError, match="NAME=PATH"):
        split_name("=data/a.json")


GOOD_PAIR = {"input": "x", "output_1": "a", "output_2": "b", "label": 1}


@pytest.mark.parametrize("records, message", [
    ({"input": "x"}, "expected a non-empty JSON list"),
    ([], "expected a non-empty JSON list"),
    ([GOOD_PAIR, {**GOOD_PAIR, "label": 3}], r"record 2: label: must be 1, 2 or \"tie\", got 3"),
    ([{**GOOD_PAIR, "label": 0}], r"record 1: label"),  # 0-based labels must not pass for ties
    ([{**GOOD_PAIR, "label": "TIE"}], r"record 1: label"),
    ([{"input": "x", "output_1": "a", "label": 1}], r"record 1: output_2: must be a string"),
    ([{**GOOD_PAIR, "label": True}], r"record 1: label"),
    ([{**GOOD_PAIR, "label": "1"}], r"record 1: label"),
    (["text"], r"record 1: expected a JSON object"),
    ([{**GOOD_PAIR, "id": "k"}, {**GOOD_PAIR, "id": "k"}], r"record 2: id: pair id 'k' already used by .*record 1"),
])
def test_load_llmbar_errors_name_file_item_and_field(tmp_path, records, message):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match=message) as error:
        load_llmbar(path)
    assert str(error.value).startswith(str(path))


def test_file_ids_are_used_when_present(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([{"id": 17, "input": "x", "output_1": "a", "output_2": "b", "label": 2},
                                {"input": "y", "output_1": "a", "output_2": "b", "label": 1}]))
    assert [p.id for p in load_llmbar(path)] == ["17", f"{path}-1"]
    assert [p.id for p in load_llmbar([("mine", path)])] == ["17", "mine-1"]


# ---------------------------------------------------------------- scoring maths

def test_accuracy_agreement_and_failures_on_hand_made_verdicts():
    pairs = [pair("p0", 1), pair("p1", 2), pair("p2", 1), pair("p3", 2)]
    verdicts = {"p0": {"ab": 1, "ba": 1},  # right in both orders, agreeing
                "p1": {"ab": 1, "ba": 2},  # positional flip: right only in ba
                "p2": {"ab": None, "ba": 2},  # failure in ab, wrong in ba
                "p3": {"ab": 2, "ba": "tie"}}  # right in ab, tie (wrong) in ba
    result = score_verdicts(pairs, verdicts)
    assert result.orders == ["ab", "ba"]
    assert result.accuracy == {"ab": 2 / 4, "ba": 2 / 4}
    assert result.mean_accuracy == 0.5
    assert result.positional_agreement == 1 / 4
    assert (result.n_failures, result.failure_rate) == (1, 1 / 8)
    assert result.n_missing == 0


def test_positional_agreement_counts_agreeing_wrong_verdicts_and_per_source_split():
    pairs = [pair("n0", 1, "natural"), pair("n1", 1, "natural"), pair("a0", 2, "adversarial")]
    verdicts = {"n0": {"ab": 2, "ba": 2}, "n1": {"ab": 1, "ba": 1}, "a0": {"ab": 1, "ba": None}}
    result = score_verdicts(pairs, verdicts)
    assert result.positional_agreement == 2 / 3  # n0 agrees although both verdicts are wrong
    assert result.accuracy == {"ab": 1 / 3, "ba": 1 / 3}
    natural, adversarial = result.per_source["natural"], result.per_source["adversarial"]
    assert natural.accuracy == {"ab": 0.5, "ba": 0.5} and natural.failure_rate == 0
    assert adversarial.accuracy == {"ab": 0, "ba": 0} and adversarial.failure_rate == 0.5
    assert adversarial.positional_agreement == 0


def test_ties_and_failures_in_both_orders_are_no_agreement_unless_llmbar():
    pairs = [pair("p0", 1), pair("p1", 2), pair("p2", "tie"), pair("p3", 1)]
    verdicts = {"p0": {"ab": "tie", "ba": "tie"},  # tie twice: chose no output
                "p1": {"ab": None, "ba": None},  # failed twice
                "p2": {"ab": "tie", "ba": 1},  # gold tie: right only for the tie verdict
                "p3": {"ab": 1, "ba": 1}}
    same = score_verdicts(pairs, verdicts)
    assert same.positional_agreement == 1 / 4 and same.agreement_method == "same-output"
    assert same.accuracy == {"ab": 2 / 4, "ba": 1 / 4} and same.both_correct == 1 / 4
    llmbar = score_verdicts(pairs, verdicts, agreement="llmbar")
    assert llmbar.positional_agreement == 3 / 4  # LLMBar's "equal": both ties and both failures count
    assert llmbar.accuracy == same.accuracy and llmbar.per_source["set"].positional_agreement == 3 / 4
    with pytest.raises(ValueError, match="agreement must be one of"):
        score_verdicts(pairs, verdicts, agreement="equal")


def test_a_missing_order_is_never_agreement_even_for_llmbar():
    pairs = [pair("p0", 1), pair("p1", 1)]
    result = score_verdicts(pairs, {"p0": {"ab": None}, "p1": {"ab": None, "ba": None}}, agreement="llmbar")
    assert result.positional_agreement == 1 / 2 and result.missing == [{"id": "p0", "order": "ba"}]


def kappa_by_formula(a, b):
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    chance = sum((a.count(c) / n) * (b.count(c) / n) for c in set(a) | set(b))
    return (observed - chance) / (1 - chance)


def test_cohen_kappa_is_the_textbook_formula_with_failures_a_category_of_their_own():
    gold = ["1", "1", "2", "2", "2", "1", "2", "1"]
    judged = ["1", "failure", "2", "1", "2", "1", "missing", "2"]
    # By hand: p_o = 4/8; p_e = (4/8)(3/8) + (4/8)(3/8) = 24/64, so kappa = (32/64 - 24/64) / (40/64) = 0.2.
    assert cohen_kappa(gold, judged) == pytest.approx(0.2)
    assert cohen_kappa(gold, judged) == pytest.approx(kappa_by_formula(gold, judged))
    assert cohen_kappa(["1", "1"], ["1", "1"]) is None  # chance agreement 1: undefined
    assert cohen_kappa(["1", "2"], ["2", "1"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="one length"):
        cohen_kappa(["1"], ["1", "2"])


def test_kappa_per_order_counts_a_failure_as_disagreeing_and_not_as_a_guess():
    labels = [1, 2, 1, 2, 1, 2]
    pairs = [pair(f"p{i}", label) for i, label in enumerate(labels)]
    ab = [1, 2, 1, 2, None, None]  # two failures
    ba = [1, 2, 2, 2, 1, 2]
    result = score_verdicts(pairs, {f"p{i}": {"ab": a, "ba": b} for i, (a, b) in enumerate(zip(ab, ba))})
    gold = [str(label) for label in labels]
    assert result.kappa["ab"] == pytest.approx(kappa_by_formula(gold, ["1", "2", "1", "2", "failure", "failure"]))
    assert result.kappa["ba"] == pytest.approx(kappa_by_formula(gold, [str(v) for v in ba]))
    assert result.mean_kappa == pytest.approx((result.kappa["ab"] + result.kappa["ba"]) / 2)
    assert result.report_row("all")["kappa"] == result.mean_kappa
    # Always-right verdicts: kappa 1; a judge that always says 1 agrees no better than chance.
    assert score_verdicts(pairs, {p.id: {"ab": p.label} for p in pairs}).kappa == {"ab": 1.0}
    assert score_verdicts(pairs, {p.id: {"ab": 1} for p in pairs}).kappa["ab"] == pytest.approx(0.0)


def test_score_verdicts_rejects_unknown_ids_and_bad_values():
    pairs = [pair("p0", 1)]
    with pytest.raises(ValueError, match="unknown pair id.*'ghost'"):
        score_verdicts(pairs, {"p0": {"ab": 1}, "ghost": {"ab": 1}})
    with pytest.raises(ValueError, match="verdict must be"):
        score_verdicts(pairs, {"p0": {"ab": "A"}})
    with pytest.raises(ValueError, match="order"):
        score_verdicts(pairs, {"p0": {"xy": 1}})


# ---------------------------------------------------------------- predictions files

def test_predictions_file_with_missing_predictions(tmp_path):
    pairs = [pair("p0", 1), pair("p1", 2), pair("p2", 1)]
    path = tmp_path / "preds.jsonl"
    write_jsonl(path, [{"id": "p0", "verdict": 1}, {"id": "p0", "order": "ba", "verdict": 1},
                       {"id": "p1", "order": "ab", "verdict": None}, {"id": "p1", "order": "ba", "verdict": 2},
                       {"id": "p2", "order": "ab", "verdict": 1}])
    result = evaluate_predictions(pairs, load_predictions(path))
    assert result.missing == [{"id": "p2", "order": "ba"}] and result.n_missing == 1
    assert result.accuracy == {"ab": 2 / 3, "ba": 2 / 3}  # the missing prediction counts as wrong
    assert result.n_failures == 1 and result.failure_rate == 1 / 6
    assert result.positional_agreement == 1 / 3
    json.dumps(result.to_dict())


def test_two_predictions_for_one_pair_and_order_from_different_files_raise_naming_both():
    pairs = [pair("p0", 1)]
    with pytest.raises(ValueError, match=r"two predictions for pair 'p0' order ab: a.jsonl:1 and b.jsonl:4"):
        evaluate_predictions(pairs, [Prediction("p0", "ab", 1, "a.jsonl:1"), Prediction("p0", "ab", 2, "b.jsonl:4")])


def test_predictions_for_one_order_only():
    pairs = [pair("p0", 1), pair("p1", 2)]
    result = evaluate_predictions(pairs, [Prediction("p0", "ab", 1, "test"), Prediction("p1", "ab", 1, "test")])
    assert result.orders == ["ab"] and result.positional_agreement is None
    assert result.accuracy == {"ab": 0.5} and result.mean_accuracy == 0.5


def test_unknown_prediction_ids_are_listed(tmp_path):
    path = tmp_path / "preds.jsonl"
    write_jsonl(path, [{"id": "p0", "verdict": 1}, {"id": "nope", "verdict": 2}, {"id": 42, "verdict": 1}])
    with pytest.raises(ValueError, match=r"2 prediction\(s\).*'nope \(.*preds.jsonl:2\)'.*'42 \(.*preds.jsonl:3\)'"):
        evaluate_predictions([pair("p0", 1)], load_predictions(path))


@pytest.mark.parametrize("record, message", [
    ({"id": "p0", "verdict": 3}, r"preds.jsonl:2: verdict: must be"),
    ({"id": "p0", "verdict": "B"}, r"preds.jsonl:2: verdict: must be"),
    ({"id": "p0", "verdict": 1.0}, r"preds.jsonl:2: verdict: must be"),
    ({"id": "p0"}, r"preds.jsonl:2: verdict: missing"),
    ({"id": "p0", "order": "AB", "verdict": 1}, r"preds.jsonl:2: order: must be"),
    ({"verdict": 1}, r"preds.jsonl:2: id: must be"),
    ({"id": "p1", "verdict": 1},
     r"preds.jsonl:2: id: second prediction for 'p1' order ab \(first at .*preds.jsonl:1\)"),
    ("[1, 2]", r"preds.jsonl:2: expected a JSON object"),
])
def test_predictions_file_errors_name_line_and_field(tmp_path, record, message):
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps({"id": "p1", "verdict": 2}) + "\n"
                    + (record if isinstance(record, str) else json.dumps(record)) + "\n")
    with pytest.raises(RecordError, match=message) as error:
        load_predictions(path)
    assert error.value.line == 2


# ---------------------------------------------------------------- running judges

@pytest.fixture
def llmbar_pairs(shared_data):
    return load_llmbar([("natural", f"{shared_data}/llmbar/natural.json"),
                        ("adversarial_neighbor", f"{shared_data}/llmbar/adversarial_neighbor.json")])


def test_an_oracle_judge_scores_perfectly(llmbar_pairs):
    report = evaluate_judge(ScriptedBackend(oracle_for(llmbar_pairs)), llmbar_pairs, ["plain", "rules+cot"])
    assert set(report.results) == {"plain", "rules+cot"}
    for result in report.results.values():
        assert result.accuracy == {"ab": 1.0, "ba": 1.0} and result.positional_agreement == 1.0
        assert result.n_failures == 0 and result.per_source["adversarial_neighbor"].mean_accuracy == 1.0
    rows = report.report_rows()
    assert [(r["strategy"], r["dataset"], r["n_items"]) for r in rows] == [
        ("plain", "all", 234), ("plain", "adversarial_neighbor", 134), ("plain", "natural", 100),
        ("rules+cot", "all", 234), ("rules+cot", "adversarial_neighbor", 134), ("rules+cot", "natural", 100)]
    assert all(r["mean_accuracy"] == 1.0 and r["parse_failure_rate"] == 0 for r in rows)


def test_a_position_biased_judge_scores_the_label_shares(llmbar_pairs):
    report = evaluate_judge(ScriptedBackend(lambda prompt: "Verdict: A"), llmbar_pairs)
    result = report.results["plain"]
    share_label_1 = sum(p.label == 1 for p in llmbar_pairs) / len(llmbar_pairs)
    assert result.accuracy["ab"] == pytest.approx(share_label_1)
    assert result.accuracy["ba"] == pytest.approx(1 - share_label_1)
    assert result.mean_accuracy == pytest.approx(0.5) and result.positional_agreement == 0


def test_an_unparseable_judge_is_all_failures_and_never_right(llmbar_pairs):
    report = evaluate_judge(ScriptedBackend(lambda prompt: "Both are good."), llmbar_pairs[:20])
    result = report.results["plain"]
    assert result.accuracy == {"ab": 0, "ba": 0} and result.failure_rate == 1.0 and result.n_failures == 40


def test_judge_predictions_round_trip_through_a_file(tmp_path, llmbar_pairs):
    pairs = llmbar_pairs[95:110]  # both sources
    def half_right(prompt: str) -> str:
        return oracle_for(pairs)(prompt) if len(block(prompt, "Instruction")) % 2 else "no verdict"
    report = evaluate_judge(ScriptedBackend(half_right), pairs, ["swap"])
    path = tmp_path / "swap.jsonl"
    write_jsonl(path, report.predictions("swap"))
    rescored = evaluate_predictions(pairs, load_predictions(path), name="swap")
    assert rescored.to_dict() == report.results["swap"].to_dict()
    assert 0 < report.results["swap"].failure_rate < 1


def test_single_order_meta_eval(llmbar_pairs):
    report = evaluate_judge(ScriptedBackend(lambda prompt: "Verdict: B"), llmbar_pairs[:10],
                            config=JudgeConfig(both_orders=False))
    result = report.results["plain"]
    assert result.orders == ["ab"] and result.positional_agreement is None
    assert result.accuracy["ab"] == sum(p.label == 2 for p in llmbar_pairs[:10]) / 10
    with pytest.raises(ValueError, match="same strategy twice"):
        evaluate_judge(ScriptedBackend(lambda prompt: "Verdict: B"), llmbar_pairs[:1], ["cot+rules", "rules+cot"])
