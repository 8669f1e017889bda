import json
import math

import numpy as np
import pytest

from alignkit.evaluation.leaderboard import BattleError, bradley_terry, load_battles

ELO = 400 / math.log(10)


def simulate_battles(strengths: dict[str, float], n: int, seed: int, tie_rate: float = 0.1) -> list[dict]:
    """Battles whose expected score (ties as half) is exactly sigmoid(theta_a - theta_b)."""
    rng = np.random.default_rng(seed)
    names = list(strengths)
    battles = []
    for _ in range(n):
        i, j = rng.choice(len(names), size=2, replace=False)
        a, b = names[i], names[j]
        p = 1 / (1 + math.exp(-(strengths[a] - strengths[b])))
        # P(win) = p - tie/2, P(tie) = tie, so the expected score stays p
        u = rng.random()
        winner = "a" if u < p - tie_rate / 2 else ("tie" if u < p + tie_rate / 2 else "b")
        battles.append({"model_a": a, "model_b": b, "winner": winner})
    return battles


TRUE = {"base": 0.0, "sft": 0.6, "dpo": 1.1, "tiny": -0.9, "big": 1.6}


def test_recovers_ordering_and_strengths():
    board = bradley_terry(simulate_battles(TRUE, 4000, seed=0), anchor="base", n_bootstrap=0)
    assert board.models == sorted(TRUE, key=TRUE.get, reverse=True)
    assert board.ratings["base"] == 1000.0
    for model, theta in TRUE.items():
        # about 2.5 standard errors for ~1600 battles per model
        assert board.ratings[model] == pytest.approx(1000 + ELO * theta, abs=50)


def test_ties_count_as_half_a_win():
    # a: 3 wins, 1 loss, 6 ties -> score 6 of 10 -> P(a beats b) = 0.6 at the maximum
    battles = ([{"model_a": "a", "model_b": "b", "winner": "a"}] * 3 + [{"model_a": "b", "model_b": "a", "winner": "a"}]
               + [{"model_a": "a", "model_b": "b", "winner": "tie"}] * 6)
    board = bradley_terry(battles, anchor="b", n_bootstrap=0)
    assert board.ratings["a"] - board.ratings["b"] == pytest.approx(400 * math.log10(0.6 / 0.4), abs=0.5)
    assert board.win_probability("a", "b") == pytest.approx(0.6, abs=1e-3)


def test_win_matrix_matches_the_elo_formula():
    board = bradley_terry(simulate_battles(TRUE, 1000, seed=1), anchor="sft", anchor_rating=1500, n_bootstrap=0)
    assert board.ratings["sft"] == 1500
    for i, a in enumerate(board.models):
        for j, b in enumerate(board.models):
            expected = 0.5 if a == b else 1 / (1 + 10 ** ((board.ratings[b] - board.ratings[a]) / 400))
            assert board.win_matrix[i][j] == pytest.approx(expected, abs=1e-9)
            assert board.win_matrix[i][j] + board.win_matrix[j][i] == pytest.approx(1.0)


def test_bootstrap_interval_contains_the_truth_in_simulation():
    truth = {"base": 0.0, "a": 0.5, "b": -0.4, "c": 1.0}
    covered = total = 0
    for seed in range(30):
        board = bradley_terry(simulate_battles(truth, 600, seed=seed), anchor="base", n_bootstrap=100, seed=seed)
        for model in ("a", "b", "c"):
            true_rating = 1000 + ELO * truth[model]
            covered += board.ci_low[model] <= true_rating <= board.ci_high[model]
            total += 1
            assert board.ci_low[model] <= board.ratings[model] <= board.ci_high[model]
            assert board.ci_high[model] - board.ci_low[model] < 160  # informative, not trivially wide
    assert covered / total >= 0.85


def test_bootstrap_is_seeded():
    battles = simulate_battles(TRUE, 500, seed=2)
    first = bradley_terry(battles, n_bootstrap=50, seed=7)
    again = bradley_terry(battles, n_bootstrap=50, seed=7)
    other = bradley_terry(battles, n_bootstrap=50, seed=8)
    assert first.ci_low == again.ci_low and first.ci_high == again.ci_high
    assert first.ci_low != other.ci_low
    assert first.ci_low[first.anchor] == first.ci_high[first.anchor] == first.anchor_rating


def test_unbeaten_model_gets_a_finite_top_rating():
    battles = [{"model_a": "champ", "model_b": "x", "winner": "a"}] * 5 + [
        {"model_a": "x", "model_b": "y", "winner": "a"}, {"model_a": "x", "model_b": "y", "winner": "b"}]
    board = bradley_terry(battles, n_bootstrap=20)
    assert board.models[0] == "champ"
    assert all(math.isfinite(r) for r in board.ratings.values())


def test_to_dict_lists_models_best_first_with_counts():
    board = bradley_terry(simulate_battles(TRUE, 300, seed=3), anchor="base", n_bootstrap=10)
    data = board.to_dict()
    assert [r["model"] for r in data["ratings"]] == board.models
    assert sum(r["n_battles"] for r in data["ratings"]) == 2 * 300
    assert data["win_matrix"]["models"] == board.models


@pytest.mark.parametrize("bad, message", [
    ({"model_a": "a", "model_b": "b", "winner": None}, "battles\\[1\\]: field 'winner'"),
    ({"model_a": "a", "model_b": "b", "winner": "A"}, "battles\\[1\\]: field 'winner'"),
    ({"model_a": "a", "model_b": "a", "winner": "a"}, "battles\\[1\\]: model_a and model_b are both 'a'"),
    ({"model_a": "a", "winner": "a"}, "battles\\[1\\]: missing field 'model_b'"),
    ({"model_a": "", "model_b": "b", "winner": "a"}, "battles\\[1\\]: field 'model_a'"),
])
def test_bad_battles_name_position_and_field(bad, message):
    with pytest.raises(BattleError, match=message):
        bradley_terry([{"model_a": "a", "model_b": "b", "winner": "a"}, bad])


def test_disconnected_models_and_unknown_anchor_are_rejected():
    battles = [{"model_a": "a", "model_b": "b", "winner": "a"}, {"model_a": "c", "model_b": "d", "winner": "tie"}]
    with pytest.raises(BattleError, match="2 groups that never meet: a, b; c, d"):
        bradley_terry(battles)
    with pytest.raises(BattleError, match="anchor model 'z'"):
        bradley_terry(battles[:1], anchor="z")
    with pytest.raises(BattleError, match="no battles"):
        bradley_terry([])


def test_load_battles_names_file_and_line(tmp_path):
    path = tmp_path / "battles.jsonl"
    path.write_text(json.dumps({"model_a": "a", "model_b": "b", "winner": "tie"}) + "\n"
                    + json.dumps({"model_a": "a", "model_b": "b", "winner": "draw"}) + "\n")
    with pytest.raises(BattleError, match=f"{path}:2: field 'winner'"):
        load_battles(path)
    path.write_text(json.dumps({"model_a": "a", "model_b": "b", "winner": "tie"}) + "\n")
    assert bradley_terry(load_battles(path), n_bootstrap=0).ratings == {"a": 1000.0, "b": 1000.0}
