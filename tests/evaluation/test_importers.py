"""Other tools' judge outputs as meta-eval predictions: LLMBar evaluator result.json files.

The files are written here in LLMBar's layout (`<subset>/dataset.json`, `<subset>/evaluators/<model>/
<method>/result.json`, records of the dataset with a "results" list); LLMBar's own published statistics
are recomputed the way its evaluator counts them and compared with alignkit's numbers.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.data.errors import DataError, RecordError
from alignkit.evaluation.importers import detect_format, judge_name, load_predictions_file, read_llmbar_results
from alignkit.evaluation.meta_eval import evaluate_predictions, load_llmbar
from tests.helpers.files import write_jsonl

SHOWN = {("swap = False", "1"): "Output (a)", ("swap = False", "2"): "Output (b)",
         ("swap = True", "1"): "Output (b)", ("swap = True", "2"): "Output (a)"}


def dataset(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"input": f"task {seed}-{i}", "output_1": f"first {i}", "output_2": f"second {i}", "label": rng.choice([1, 2])}
            for i in range(n)]


def entry(false: str | None, true: str | None) -> dict:
    """One LLMBar results entry: each order's completion and its winner, already in output terms."""
    return {key: {"completion": [SHOWN.get((key, winner), "I cannot decide."), "stop"], "winner": winner}
            for key, winner in (("swap = False", false), ("swap = True", true))}


def write_subset(root: Path, subset: str, records: list[dict], results: list[list[dict]],
                 evaluator: str = "GPT-4/Vanilla") -> tuple[Path, Path]:
    folder = root / subset
    (folder / "evaluators" / evaluator).mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(records, indent=2))
    result = folder / "evaluators" / evaluator / "result.json"
    result.write_text(json.dumps([{**record, "results": r} for record, r in zip(records, results)], indent=2))
    return folder / "dataset.json", result


def llmbar_statistics(records: list[dict], results: list[list[dict]]) -> dict:
    """What LLMBar's evaluator writes to statistics.json, counted its way: the last results entry of each
    record, a winner string compared with str(label), "equal" when the two winners are the same."""
    n = len(records)
    false = [r[-1]["swap = False"]["winner"] for r in results]
    true = [r[-1]["swap = True"]["winner"] for r in results]
    labels = [str(record["label"]) for record in records]
    return {"correct_False": sum(f == l for f, l in zip(false, labels)) / n,
            "correct_True": sum(t == l for t, l in zip(true, labels)) / n,
            "correct_both": sum(f == l == t for f, t, l in zip(false, true, labels)) / n,
            "equal": sum(f == t for f, t in zip(false, true)) / n}


def random_results(records: list[dict], seed: int) -> list[list[dict]]:
    """Mostly right, sometimes positional, sometimes unparseable, sometimes with a synthesized second round."""
    rng = random.Random(seed)
    results = []
    for record in records:
        choices = [str(record["label"]), str(3 - record["label"]), None]  # right, wrong, unparseable
        picks = rng.choices(choices, weights=[6, 2, 1], k=4)
        rounds = [entry(picks[0], picks[1])]
        if rng.random() < 0.3:
            rounds.append(entry(picks[2], picks[3]))  # only this last round counts
        results.append(rounds)
    return results


def test_predictions_follow_the_last_round_with_the_swap_flag_as_order(tmp_path):
    records = dataset(4)
    results = [[entry("1", "2")],
               [entry("1", "2"), entry("2", "2")],  # synthesized round decides
               [entry(None, "1")],  # no pattern matched in order ab
               [entry(None, None)]]
    pairs_file, result = write_subset(tmp_path, "Natural", records, results)
    pairs = load_llmbar([("natural", pairs_file)])
    predictions = read_llmbar_results(result, pairs)
    assert [(p.id, p.order, p.verdict) for p in predictions] == [
        ("natural-0", "ab", 1), ("natural-0", "ba", 2), ("natural-1", "ab", 2), ("natural-1", "ba", 2),
        ("natural-2", "ab", None), ("natural-2", "ba", 1), ("natural-3", "ab", None), ("natural-3", "ba", None)]
    assert predictions[2].where == f"{result}:record 2"
    assert load_predictions_file(result, pairs).predictions == predictions  # format told from the first record


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_alignkit_reproduces_llmbar_statistics_with_the_compatible_agreement(tmp_path, seed):
    records = dataset(60, seed)
    results = random_results(records, seed)
    pairs_file, result = write_subset(tmp_path, "Natural", records, results)
    pairs = load_llmbar(pairs_file)
    predictions = read_llmbar_results(result, pairs)
    expected = llmbar_statistics(records, results)
    llmbar = evaluate_predictions(pairs, predictions, agreement="llmbar")
    assert llmbar.accuracy["ab"] == pytest.approx(expected["correct_False"])
    assert llmbar.accuracy["ba"] == pytest.approx(expected["correct_True"])
    assert llmbar.mean_accuracy == pytest.approx((expected["correct_False"] + expected["correct_True"]) / 2)
    assert llmbar.both_correct == pytest.approx(expected["correct_both"])
    assert llmbar.positional_agreement == pytest.approx(expected["equal"])
    # The default agreement leaves out pairs that failed in both orders: fewer agreements, never more.
    both_failed = sum(r[-1]["swap = False"]["winner"] is None and r[-1]["swap = True"]["winner"] is None
                      for r in results)
    same = evaluate_predictions(pairs, predictions)
    assert same.positional_agreement == pytest.approx(expected["equal"] - both_failed / len(records))


def test_result_files_away_from_their_dataset_are_matched_by_content(tmp_path):
    natural, neighbor = dataset(3, 1), dataset(3, 2)
    pairs_n, _ = write_subset(tmp_path / "a", "Natural", natural, [[entry("1", "1")]] * 3)
    pairs_b, _ = write_subset(tmp_path / "a", "Neighbor", neighbor, [[entry("2", "2")]] * 3)
    moved = tmp_path / "copy" / "result.json"  # not under <subset>/evaluators/: no dataset.json beside it
    moved.parent.mkdir()
    moved.write_text(json.dumps([{**r, "results": [entry("2", "1")]} for r in reversed(neighbor)]))
    pairs = load_llmbar([("natural", pairs_n), ("neighbor", pairs_b)])
    predictions = read_llmbar_results(moved, pairs)
    assert [(p.id, p.order) for p in predictions[:2]] == [("neighbor-2", "ab"), ("neighbor-2", "ba")]
    assert judge_name(moved, "llmbar") == "result"


@pytest.mark.parametrize("change, message", [
    (lambda r: r[1].update(output_2="edited"), r"result.json:record 2: output_2: differs from .*dataset.json:record 2"),
    (lambda r: r[0].update(label=2 if r[0]["label"] == 1 else 1), r"record 1: label: differs"),
    (lambda r: r[2]["results"][-1]["swap = True"].update(winner="B"),
     r"record 3: results\[0\]\['swap = True'\].winner: must be \"1\", \"2\" or null, got 'B'"),
    (lambda r: r[2]["results"][-1]["swap = True"].update(winner=1), r"record 3: .*winner: must be"),
    (lambda r: r[1].update(results=[]), r"record 2: results: must be a non-empty list"),
    (lambda r: r[0]["results"][-1].pop("swap = False"), r"record 1: results\[0\]\['swap = False'\]: must be an object"),
    (lambda r: r.append({**r[0], "input": "extra"}), r"record 4: .*has only 3 pairs"),
])
def test_bad_result_files_name_file_record_and_field(tmp_path, change, message):
    records = dataset(3)
    pairs_file, result = write_subset(tmp_path, "Natural", records, [[entry("1", "2")]] * 3)
    content = json.loads(result.read_text())
    change(content)
    result.write_text(json.dumps(content))
    with pytest.raises(RecordError, match=message):
        read_llmbar_results(result, load_llmbar(pairs_file))


def test_unmatched_and_ambiguous_records_stop_with_their_place(tmp_path):
    records = dataset(2)
    pairs_file, _ = write_subset(tmp_path, "Natural", records, [[entry("1", "1")]] * 2)
    elsewhere = tmp_path / "result.json"
    elsewhere.write_text(json.dumps([{**records[0], "input": "never seen", "results": [entry("1", "1")]}]))
    with pytest.raises(RecordError, match=r"result.json:record 1: input: no loaded pair has this input"):
        read_llmbar_results(elsewhere, load_llmbar(pairs_file))
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps(records))
    elsewhere.write_text(json.dumps([{**records[1], "results": [entry("1", "1")]}]))
    with pytest.raises(RecordError, match=r"record 1: input: 2 loaded pairs have"):
        read_llmbar_results(elsewhere, load_llmbar([("a", pairs_file), ("b", twice)]))


def test_format_detection_and_names(tmp_path):
    records = dataset(1)
    _, result = write_subset(tmp_path, "Natural", records, [[entry("1", "1")]], evaluator="LLaMA2/Swap_CoT")
    assert detect_format(result) == "llmbar" and judge_name(result, "llmbar") == "LLaMA2/Swap_CoT"
    mine = write_jsonl(tmp_path / "judge_x.jsonl", [{"id": "a", "verdict": 1}])
    assert detect_format(mine) == "alignkit" and judge_name(mine, "alignkit") == "judge_x"
    other = write_jsonl(tmp_path / "other.jsonl", [{"question_id": 1, "model": "m"}])
    with pytest.raises(RecordError, match=r"other.jsonl:1: cannot tell the format"):
        detect_format(other)
    with pytest.raises(DataError, match="file not found"):
        detect_format(tmp_path / "missing.json")


def results_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_meta_eval_cli_reads_two_llmbar_subsets_as_one_judge(tmp_path, capsys):
    natural, neighbor = dataset(40, 11), dataset(30, 12)
    natural_results, neighbor_results = random_results(natural, 11), random_results(neighbor, 12)
    root = tmp_path / "Dataset" / "LLMBar"
    pairs_n, result_n = write_subset(root, "Natural", natural, natural_results)
    pairs_b, result_b = write_subset(root, "Adversarial/Neighbor", neighbor, neighbor_results)
    out = tmp_path / "me"
    code = main(["meta-eval", "--pairs", str(pairs_n), str(pairs_b), "--predictions", str(result_n), str(result_b),
                 "--agreement", "llmbar", "--out", str(out)])
    assert code == 0
    rows = {row["dataset"]: row for row in results_of(out)["sections"]["strategy_comparison"]}
    assert {row["strategy"] for row in rows.values()} == {"GPT-4/Vanilla"}
    for pairs_file, records, results in ((pairs_n, natural, natural_results), (pairs_b, neighbor, neighbor_results)):
        row, expected = rows[str(pairs_file)], llmbar_statistics(records, results)
        assert row["accuracy_by_order"]["ab"] == pytest.approx(expected["correct_False"])
        assert row["accuracy_by_order"]["ba"] == pytest.approx(expected["correct_True"])
        assert row["positional_agreement"] == pytest.approx(expected["equal"])
        assert row["both_correct"] == pytest.approx(expected["correct_both"])
        assert row["agreement_method"] == "llmbar"
    assert rows["all"]["n_items"] == 70 and results_of(out)["meta"]["agreement"] == "llmbar"
    assert "LLMBar's 'equal'" in capsys.readouterr().out


def test_meta_eval_cli_names_pairs_and_judges(tmp_path, capsys):
    records = dataset(5, 3)
    pairs_file, result = write_subset(tmp_path, "Natural", records, [[entry("1", "2")]] * 5)
    out = tmp_path / "me"
    code = main(["meta-eval", "--pairs", f"nat={pairs_file}", "--predictions", f"mine={result}",
                 "--predictions-format", "llmbar", "--limit", "2", "--out", str(out)])
    assert code == 0
    rows = results_of(out)["sections"]["strategy_comparison"]
    assert [(r["strategy"], r["dataset"], r["n_items"]) for r in rows] == [("mine", "all", 2), ("mine", "nat", 2)]
    assert results_of(out)["details"]["predictions_beyond_limit"] == {"mine": 6}
    # An alignkit predictions file given as LLMBar output is refused with its place.
    wrong = write_jsonl(tmp_path / "p.jsonl", [{"id": "nat-0", "verdict": 1}])
    code = main(["meta-eval", "--pairs", f"nat={pairs_file}", "--predictions", wrong, "--predictions-format", "llmbar",
                 "--out", str(tmp_path / "me2")])
    assert code == 2 and "p.jsonl:1: results: must be a non-empty list" in capsys.readouterr().err
