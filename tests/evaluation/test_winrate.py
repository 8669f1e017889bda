import itertools
import json
import math
import statistics

import numpy as np
import pytest

from alignkit.data.errors import RecordError
from alignkit.evaluation.winrate import (
    VerdictError, fit_logistic, length_controlled_win_rate, load_verdicts, validate_verdicts, win_rate, win_rate_entry,
)


def verdict(item_id, winner, len_model=100, len_reference=100):
    return {"id": str(item_id), "winner": winner, "len_model": len_model, "len_reference": len_reference}


def records_from(winners):
    return [verdict(i, w) for i, w in enumerate(winners)]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ------------------------------------------------------------------ raw win rate

def test_win_rate_and_standard_error_by_hand():
    winners = ["model", "model", "model", "tie", "reference", "reference", None, None]
    result = win_rate(records_from(winners))
    per_item = [1, 1, 1, 0.5, 0, 0]  # failures left out
    assert result.win_rate == pytest.approx(3.5 / 6)
    assert result.standard_error == pytest.approx(statistics.stdev(per_item) / math.sqrt(6))
    assert (result.wins, result.ties, result.losses) == (3, 1, 2)
    assert (result.n_items, result.n_scored, result.failures) == (8, 6, 2)
    assert result.failure_rate == pytest.approx(2 / 8)
    assert result.ci_low == pytest.approx(3.5 / 6 - 1.959964 * result.standard_error)
    assert result.ci_high == pytest.approx(3.5 / 6 + 1.959964 * result.standard_error)


def test_failures_never_count_as_wins_or_ties():
    base = ["model", "reference", "reference", "tie"]
    clean = win_rate(records_from(base))
    with_failures = win_rate(records_from(base + [None] * 6))
    assert with_failures.win_rate == clean.win_rate
    assert with_failures.standard_error == clean.standard_error
    assert with_failures.failures == 6 and with_failures.n_scored == 4
    assert with_failures.wins + with_failures.ties + with_failures.losses == 4


def test_all_failures_give_no_rate_rather_than_zero():
    result = win_rate(records_from([None, None, None]))
    assert result.win_rate is None and result.standard_error is None
    assert result.failure_rate == 1.0 and result.n_scored == 0
    lc = length_controlled_win_rate(records_from([None, None]))
    assert lc.lc_win_rate is None and lc.failures == 2


def test_single_item_has_no_standard_error():
    result = win_rate(records_from(["model"]))
    assert result.win_rate == 1.0 and result.standard_error is None and result.ci_low is None


def test_both_orders_average_per_item_and_fail_if_either_order_fails():
    first = records_from(["model", "model", "tie", "reference"])
    second = records_from(["model", "reference", "model", None])
    result = win_rate(first, second)
    per_item = [1.0, 0.5, 0.75]  # item 3 failed in the second order
    assert result.win_rate == pytest.approx(sum(per_item) / 3)
    assert result.standard_error == pytest.approx(statistics.stdev(per_item) / math.sqrt(3))
    assert (result.n_items, result.n_scored, result.failures, result.orders) == (4, 3, 1, 2)
    assert (result.wins, result.ties, result.losses) == (4, 1, 1)
    assert result.order_agreement == pytest.approx(1 / 3)


def test_both_orders_must_cover_the_same_ids_and_lengths():
    with pytest.raises(VerdictError, match="only in swapped: \\['9'\\]"):
        win_rate(records_from(["model"]), [verdict(9, "model")])
    with pytest.raises(VerdictError, match="different lengths"):
        win_rate([verdict(1, "model", 10, 20)], [verdict(1, "model", 10, 21)])


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("bad, field", [
    ({"id": "q1", "winner": "Model", "len_model": 1, "len_reference": 1}, "winner"),
    ({"id": "q1", "winner": "tie", "len_model": -1, "len_reference": 1}, "len_model"),
    ({"id": "q1", "winner": "tie", "len_model": 3, "len_reference": True}, "len_reference"),
    ({"id": "q1", "winner": "tie", "len_model": 3.5, "len_reference": 1}, "len_model"),
    ({"id": "", "winner": "tie", "len_model": 3, "len_reference": 1}, "id"),
    ({"id": "q1", "len_model": 3, "len_reference": 1}, "winner"),
])
def test_bad_records_name_position_and_field(bad, field):
    with pytest.raises(VerdictError) as err:
        validate_verdicts([verdict("ok", "tie"), bad])
    assert "records[1]" in str(err.value) and f"'{field}'" in str(err.value)


def test_duplicate_ids_are_rejected():
    with pytest.raises(VerdictError, match="'q' appears more than once"):
        win_rate([verdict("q", "model"), verdict("q", "tie")])


def test_load_verdicts_names_file_and_line(tmp_path):
    path = tmp_path / "verdicts.jsonl"
    lines = [json.dumps(verdict(1, "model")), "", json.dumps(verdict(2, None)), json.dumps(verdict(3, "win"))]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(VerdictError, match=f"{path}:4 \\(id '3'\\): field 'winner'"):
        load_verdicts(path)
    path.write_text(json.dumps(verdict(1, "model")) + "\n{not json\n")
    with pytest.raises(RecordError, match=f"{path}:2: invalid JSON"):
        load_verdicts(path)
    path.write_text("\n".join(lines[:3]) + "\n")
    loaded = load_verdicts(path)
    assert [v.winner for v in loaded] == ["model", None]
    assert win_rate(loaded).failures == 1


# ------------------------------------------------------------------ length control

def test_lc_equals_raw_when_lengths_are_equal():
    rng = np.random.default_rng(3)
    options = ["model", "reference", "tie", None]
    picks = rng.choice(len(options), size=120, p=[0.5, 0.3, 0.15, 0.05])
    records = [verdict(i, options[k], 250, 250) for i, k in enumerate(picks)]
    raw = win_rate(records)
    lc = length_controlled_win_rate(records)
    assert lc.lc_win_rate == pytest.approx(raw.win_rate, abs=1e-9)
    # the sandwich SE reduces to the SE of the mean when length carries no information
    assert lc.standard_error == pytest.approx(raw.standard_error, rel=1e-6)
    assert lc.failures == raw.failures and lc.n_scored == raw.n_scored


def simulate(n, seed, *, intercept, length_effect, mean_extra_length):
    """Verdicts where P(model wins) = sigmoid(intercept + length_effect * tanh(diff / 150)), 10% ties."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        diff = int(rng.normal(mean_extra_length, 150))
        len_reference = 800  # keeps len_model positive
        p_win = sigmoid(intercept + length_effect * np.tanh(diff / 150))
        u = rng.random()
        winner = "tie" if u < 0.1 else ("model" if rng.random() < p_win else "reference")
        records.append(verdict(i, winner, len_reference + diff, len_reference))
    return records


def test_lc_moves_towards_half_when_the_model_wins_only_through_length():
    # equally good at equal length, but usually longer and the judge likes length
    records = simulate(1500, 0, intercept=0.0, length_effect=3.0, mean_extra_length=120)
    raw = win_rate(records).win_rate
    lc = length_controlled_win_rate(records)
    assert raw > 0.65  # inflated by length alone
    assert abs(lc.lc_win_rate - 0.5) < 0.05
    assert abs(lc.lc_win_rate - 0.5) < abs(raw - 0.5) / 3
    assert lc.ci_low < 0.5 < lc.ci_high
    assert lc.length_coef > 1.0


def test_lc_keeps_a_genuine_advantage_that_length_does_not_explain():
    records = simulate(1500, 1, intercept=1.2, length_effect=0.0, mean_extra_length=120)
    raw = win_rate(records).win_rate
    lc = length_controlled_win_rate(records)
    assert raw == pytest.approx(sigmoid(1.2), abs=0.05)
    assert lc.lc_win_rate == pytest.approx(raw, abs=0.04)


def test_lc_confidence_interval_covers_the_truth_in_simulation():
    truth = sigmoid(0.4)
    covered = 0
    trials = 60
    for seed in range(trials):
        records = simulate(300, 100 + seed, intercept=0.4, length_effect=1.5, mean_extra_length=60)
        lc = length_controlled_win_rate(records, length_scale=150)
        covered += lc.ci_low <= truth <= lc.ci_high
        assert lc.ci_high - lc.ci_low < 0.2  # an informative interval, not a trivially wide one
    assert covered / trials >= 0.85


def test_lc_refuses_when_length_difference_is_constant():
    records = [verdict(i, w, 300, 200) for i, w in enumerate(["model", "reference", "model", "tie"])]
    lc = length_controlled_win_rate(records)
    assert lc.lc_win_rate is None and "+100" in lc.note


def test_lc_with_all_wins_is_one():
    records = [verdict(i, "model", 100 + 10 * i, 100) for i in range(5)]
    assert length_controlled_win_rate(records).lc_win_rate == 1.0


def test_lc_with_both_orders_uses_averaged_item_scores():
    first = simulate(400, 7, intercept=0.0, length_effect=2.5, mean_extra_length=100)
    # second order agrees on every item: the combined result must equal the single-order one
    same = length_controlled_win_rate(first)
    combined = length_controlled_win_rate(first, [dict(r) for r in first])
    assert combined.lc_win_rate == pytest.approx(same.lc_win_rate, abs=1e-9)


def test_win_rate_entry_has_report_fields():
    entry = win_rate_entry("m", simulate(100, 2, intercept=0.5, length_effect=1.0, mean_extra_length=0), reference="r")
    assert entry["model"] == "m" and entry["reference"] == "r"
    assert entry["win_rate"] == win_rate(simulate(100, 2, intercept=0.5, length_effect=1.0,
                                                  mean_extra_length=0)).win_rate
    assert 0 <= entry["lc_ci_low"] <= entry["lc_win_rate"] <= entry["lc_ci_high"] <= 1


# ------------------------------------------------------------------ small evaluations

@pytest.mark.parametrize("records,swapped,reason", [
    # 2 items judged in both orders: as many items as coefficients (intercept and length)
    ([verdict(0, "model", 120, 100), verdict(1, "reference", 90, 100)],
     [verdict(0, "model", 120, 100), verdict(1, "reference", 90, 100)], "2 scored items for 2 coefficients"),
    ([verdict(0, "tie")], None, "1 scored item for 1 coefficient"),  # one tie, equal lengths
    ([verdict(0, "model")], [verdict(0, "reference")], "1 scored item for 1 coefficient"),  # orders disagree: a tie
    ([verdict(0, "tie", 150, 100)], None, "every length difference is +50"),
])
def test_lc_on_too_little_data_is_unavailable_with_the_reason(records, swapped, reason):
    entry = win_rate_entry("m", records, swapped)
    assert entry["lc_win_rate"] is None and entry["lc_ci_low"] is None and reason in entry["lc_note"]
    assert entry["win_rate"] == win_rate(records, swapped).win_rate  # every other number is kept


def test_lc_never_raises_on_any_small_evaluation():
    outcomes = ["model", "reference", "tie"]
    lengths = [(100, 100), (150, 100), (60, 100)]
    for n in (1, 2, 3):
        for winners in itertools.product(outcomes, repeat=n):
            for sizes in itertools.product(lengths, repeat=n):
                records = [verdict(i, w, *size) for i, (w, size) in enumerate(zip(winners, sizes))]
                lc = length_controlled_win_rate(records)
                if lc.lc_win_rate is None:
                    assert lc.note
                else:
                    assert 0 <= lc.lc_win_rate <= 1
                    assert all(v is None or math.isfinite(v) for v in (lc.standard_error, lc.ci_low, lc.ci_high))


def test_fit_logistic_refuses_no_more_rows_than_coefficients():
    with pytest.raises(ValueError, match="more rows than coefficients"):
        fit_logistic(np.ones((2, 2)), np.array([1.0, 0.0]), np.zeros(2))


@pytest.fixture(scope="module")
def good_judge():
    """A served ScriptedJudge in "good" mode: it prefers the output that says GOOD (B when neither does)."""
    from alignkit.serving.app import create_app
    from alignkit.serving.background import start_in_background
    from tests.helpers.judges import ScriptedJudge

    server = start_in_background(create_app(ScriptedJudge("good"), "good"))
    yield f"openai:good@{server.base_url}/v1"
    server.stop()


@pytest.mark.parametrize("model,reference,counts", [
    # won in both orders and lost in both orders: 2 items, a length difference each
    (["GOOD and long", "short"], ["ref", "GOOD reference"], (2, 2, 0)),
    (["neither"], ["whether"], (1, 1, 0)),  # B in both orders: one win, one loss, i.e. one tie item
])
def test_eval_pairwise_on_a_tiny_set_writes_every_number(tmp_path, capsys, good_judge, model, reference, counts):
    from alignkit.cli import main

    def write(name, texts):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": t}) + "\n" for i, t in enumerate(texts)))
        return str(path)

    out = tmp_path / "run"
    code = main(["eval", "pairwise", "--outputs", write("mine.jsonl", model), "--reference",
                 write("theirs.jsonl", reference), "--judge", good_judge, "--out", str(out), "--no-progress",
                 "--report"])
    console = capsys.readouterr().out
    assert code == 0
    entry = json.loads((out / "results.json").read_text())["sections"]["win_rates"][0]
    assert (entry["wins"], entry["losses"], entry["ties"]) == counts
    assert entry["win_rate"] == 0.5 and entry["n_scored"] == len(model) and entry["failures"] == 0
    assert entry["lc_win_rate"] is None and "the fit needs more items" in entry["lc_note"]
    assert f"length-controlled unavailable: {entry['lc_note']}" in console
    page = (out / "report.html").read_text()
    assert "unavailable" in page and not any(bad in page for bad in ("None", "nan%", "null"))
    assert (out / "judgments.jsonl").exists() and (out / "battles.jsonl").exists()

