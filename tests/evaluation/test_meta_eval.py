"""Meta-evaluation of judges on LLMBar-format pairs: loading, scoring maths, predictions files, judge runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alignkit.data.errors import RecordError
from alignkit.evaluation.meta_eval import (LabelledPair, Prediction, evaluate_judge, evaluate_predictions,
                                           load_llmbar, load_predictions, score_verdicts)
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
    pairs = load_llmbar([f"{shared_data}/llmbar/natural.json", f"{shared_data}/llmbar/adversarial_neighbor.json"])
    assert len(pairs) == 234
    assert pairs[0].id == "natural-0" and pairs[100].id == "adversarial_neighbor-0"
    assert {p.source for p in pairs} == {"natural", "adversarial_neighbor"}
    raw = json.loads(Path(shared_data, "llmbar", "natural.json").read_text())
    assert [p.label for p in pairs[:100]] == [r["label"] for r in raw]


GOOD_PAIR = {"input": "x", "output_1": "a", "output_2": "b", "label": 1}


@pytest.mark.parametrize("records, message", [
    ({"input": "x"}, "expected a non-empty JSON list"),
    ([], "expected a non-empty JSON list"),
    ([GOOD_PAIR, {**GOOD_PAIR, "label": 3}], r"record 2: label: must be 1 or 2, got 3"),
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
    assert [p.id for p in load_llmbar(path)] == ["17", "mine-1"]


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
    return load_llmbar([f"{shared_data}/llmbar/natural.json", f"{shared_data}/llmbar/adversarial_neighbor.json"])


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
