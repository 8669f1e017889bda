"""AlpacaEval annotations (annotations.json) as meta-eval predictions and leaderboard battles.

The file is written here in AlpacaEval's layout: a JSON list of records with instruction, output_1,
output_2, generator_1, generator_2, annotator and the numeric preference (NaN where the annotator gave none,
as pandas writes it)."""
from __future__ import annotations

import json
import math

import pytest

from alignkit.cli import main
from alignkit.data.errors import DataError, RecordError
from alignkit.evaluation.importers import detect_format, load_battles_file, load_pairs, load_predictions_file
from alignkit.evaluation.importers.alpacaeval import preference_verdict


def annotation(i, preference, generator_1="gpt4_turbo", generator_2="mine", swap=False):
    outputs = [f"reference answer {i}", f"model answer {i}"]
    if swap:
        outputs.reverse()
    return {"instruction": f"instruction {i}", "output_1": outputs[0], "output_2": outputs[1],
            "generator_1": generator_1, "generator_2": generator_2, "annotator": "weighted_alpaca_eval_gpt4_turbo",
            "preference": preference, "price_per_example": 0.01, "time_per_example": 1.2}


def write_annotations(path, records):
    path.write_text(json.dumps(records, indent=2))  # NaN is written as NaN, as pandas' to_json would not
    return str(path)


def gold_pairs(tmp_path, labels):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps([{"input": f"instruction {i}", "output_1": f"reference answer {i}",
                                 "output_2": f"model answer {i}", "label": label} for i, label in enumerate(labels)]))
    return load_pairs([("gold", path)]), path


@pytest.mark.parametrize("preference, verdict", [
    (1.0, 1), (1.2, 1), (1.4999, 1), (1.5, "tie"), (0.0, "tie"), (1.5001, 2), (1.93, 2), (2.0, 2), (None, None)])
def test_preference_reads_as_alpacaeval_discrete_win_rate_does(preference, verdict):
    assert preference_verdict(preference) == verdict


def test_annotations_match_pairs_by_content_either_way_round(tmp_path):
    pairs, _ = gold_pairs(tmp_path, [1, 2, 2, "tie"])
    path = write_annotations(tmp_path / "annotations.json", [
        annotation(0, 1.1), annotation(1, 1.8, swap=True), annotation(2, math.nan), annotation(3, 1.5),
        annotation(9, 2.0)])
    assert detect_format(path) == "alpacaeval"
    imported = load_predictions_file(path, pairs)
    # pair 1's outputs are swapped in the annotation: output_2 there (preferred) is the pair's output_1
    assert [(p.id, p.order, p.verdict) for p in imported.predictions] == [
        ("gold-0", "ab", 1), ("gold-1", "ab", 1), ("gold-2", "ab", None), ("gold-3", "ab", "tie")]
    assert (imported.records, imported.unmatched) == (5, 1)


def test_annotations_bad_values_and_no_match_are_named(tmp_path):
    pairs, _ = gold_pairs(tmp_path, [1])
    out_of_range = write_annotations(tmp_path / "a.json", [annotation(0, 1.0), annotation(0, 2.5)])
    with pytest.raises(RecordError, match=r"a.json:record 2: preference: must be between 1 and 2"):
        load_predictions_file(out_of_range, pairs)
    text = write_annotations(tmp_path / "b.json", [annotation(0, "2")])
    with pytest.raises(RecordError, match="preference: must be a number or null"):
        load_predictions_file(text, pairs, "alpacaeval")
    elsewhere = write_annotations(tmp_path / "c.json", [annotation(5, 1.0)])
    with pytest.raises(DataError, match="none of its 1 annotations has the instruction and outputs of a loaded pair"):
        load_predictions_file(elsewhere, pairs)
    nameless = write_annotations(tmp_path / "d.json", [{**annotation(0, 1.0), "generator_2": None}])
    with pytest.raises(RecordError, match="generator_2: must name the model that wrote output_2"):
        load_battles_file(nameless)


def test_meta_eval_and_leaderboard_cli_on_annotations(tmp_path, capsys):
    _, gold = gold_pairs(tmp_path, [1, 2, 1, 2])
    path = write_annotations(tmp_path / "annotations.json", [
        annotation(0, 1.2), annotation(1, 1.9), annotation(2, 1.7), annotation(3, None),
        annotation(4, 1.6, generator_1="other", generator_2="gpt4_turbo")])
    out = tmp_path / "me"
    assert main(["meta-eval", "--pairs", f"gold={gold}", "--predictions", f"gpt4={path}", "--out", str(out)]) == 0
    row = json.loads((out / "results.json").read_text())["sections"]["strategy_comparison"][0]
    # two right of four in order ab (the failure counts as wrong); one verdict a pair, so no order ba
    assert row["accuracy_by_order"] == {"ab": 0.5} and row["mean_accuracy"] == 0.5
    lb = tmp_path / "lb"
    assert main(["leaderboard", "--battles", path, "--out", str(lb), "--bootstrap", "20"]) == 0
    document = json.loads((lb / "results.json").read_text())
    assert document["meta"]["n_battles"] == 4 and document["details"]["failures"]["n_failed"] == 1
    ratings = {r["model"]: r for r in document["sections"]["leaderboard"]["ratings"]}
    assert set(ratings) == {"gpt4_turbo", "mine", "other"} and ratings["mine"]["n_battles"] == 3
    assert "5 records, 4 battles, 1 judgments without a verdict" in capsys.readouterr().out


def test_cli_format_choices_are_the_importers(tmp_path):
    from alignkit.cli import evaluate
    from alignkit.evaluation import importers

    assert evaluate.PREDICTION_FORMATS == importers.PREDICTION_FORMATS
    assert evaluate.BATTLE_FORMATS == importers.BATTLE_FORMATS
