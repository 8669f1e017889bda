"""Reward against length on policy samples: correlations by their formulas, failures left out, the
`score --length-report` results file merged by `alignkit report`."""
from __future__ import annotations

import json
import math

import pytest

from alignkit.cli import main
from alignkit.evaluation.length_bias import correlations, length_summary
from tests.helpers.files import write_jsonl

KEYWORD = "tests.helpers.reward_functions:counts_keyword"


def pearson_by_hand(xs, ys):
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return sxy / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))


def ranks(values):
    """Average ranks, 1-based, ties sharing the mean of their places."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def test_correlations_follow_their_formulas():
    rewards = [0.1, 0.5, 0.4, 2.0, 1.0, 1.0]
    lengths = [10, 40, 20, 90, 35, 60]
    figures = correlations(rewards, lengths)
    assert figures["n"] == 6
    assert figures["pearson"] == pytest.approx(pearson_by_hand(rewards, lengths))
    assert figures["spearman"] == pytest.approx(pearson_by_hand(ranks(rewards), ranks(lengths)))


@pytest.mark.parametrize("rewards, lengths", [([1.0, 2.0], [3, 4]), ([1.0, 1.0, 1.0], [1, 2, 3]),
                                              ([1.0, 2.0, 3.0], [5, 5, 5])])
def test_undefined_correlations_are_none(rewards, lengths):
    assert correlations(rewards, lengths) == {"n": len(rewards), "pearson": None, "spearman": None}


def test_score_writes_a_length_report_that_report_merges(tmp_path, capsys):
    # The reward counts the letter "l": longer answers of "l"s score higher, one record cannot be scored.
    records = write_jsonl(tmp_path / "samples.jsonl", [
        {"prompt": "a", "responses": ["l", "ll x", "lll xx", "llll"], "keyword": "l", "model": "policy"},
        {"prompt": "b", "responses": ["lllll yyyy", "l"], "keyword": "l", "model": "policy"},
        {"prompt": "c", "response": "no keyword here", "model": "policy"},
        {"prompt": "d", "responses": ["x", "xl", "xll"], "keyword": "l", "model": "base"},
    ])
    spec = tmp_path / "rewards.yaml"
    spec.write_text(f"rewards:\n  - {{kind: python, function: '{KEYWORD}', failure_reward: 0}}\n")
    out, report_dir = tmp_path / "scored.jsonl", tmp_path / "lengths"
    assert main(["score", "--rewards", str(spec), "--input", records, "--out", str(out),
                 "--length-report", str(report_dir)]) == 0
    printed = capsys.readouterr().out
    document = json.loads((report_dir / "results.json").read_text())
    series = {s["model"]: s for s in document["sections"]["score_vs_length"]["series"]}
    assert series["policy"]["lengths"] == [1, 4, 6, 4, 10, 1] and series["policy"]["scores"] == [1, 2, 3, 4, 5, 1]
    assert series["base"]["scores"] == [0, 1, 2]
    assert document["meta"]["responses left out (reward failed)"] == 1
    expected = pearson_by_hand([1, 2, 3, 4, 5, 1], [1, 4, 6, 4, 10, 1])
    assert document["details"]["correlations"]["policy"]["pearson"] == pytest.approx(expected)
    assert "reward vs length, policy: Pearson" in printed
    assert main(["report", "--results", str(report_dir / "results.json"), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Reward against response length" in page and "<svg" in page


def test_length_summary():
    figures = length_summary(["ab", "abcd efg", "x y z w"])
    assert figures == {"n": 3, "mean_chars": pytest.approx(17 / 3), "median_chars": 7.0, "mean_words": pytest.approx(7 / 3)}
    with pytest.raises(ValueError):
        length_summary([])
