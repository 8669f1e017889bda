"""Bradley-Terry ratings of several models from pairwise battles.

A battle is {"model_a": str, "model_b": str, "winner": "a" | "b" | "tie"}. Each model i has a
strength theta_i with P(i beats j) = sigmoid(theta_i - theta_j); the strengths are fitted by
maximum likelihood with a tie counted as half a win for each side.

Ratings are shown on an Elo-like scale: rating = anchor_rating + 400 / ln(10) * (theta_i -
theta_anchor), so a 400-point gap means 10:1 odds and the anchor model sits at
`anchor_rating` exactly. Confidence intervals come from a seeded bootstrap over battles.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from alignkit.data.readers import read_records
from alignkit.evaluation.newton import minimize_newton, sigmoid

WINNER_SCORES: dict[str, float] = {"a": 1.0, "tie": 0.5, "b": 0.0}
ELO_PER_LOGIT = 400.0 / math.log(10.0)


class BattleError(ValueError):
    """A battle record is malformed; the message names where and which field."""


@dataclass(frozen=True)
class Battle:
    model_a: str
    model_b: str
    winner: str  # "a" | "b" | "tie"


@dataclass
class Leaderboard:
    models: list[str]  # best first
    ratings: dict[str, float]
    ci_low: dict[str, float]
    ci_high: dict[str, float]
    battles_per_model: dict[str, int]
    anchor: str
    anchor_rating: float
    n_battles: int
    n_bootstrap: int
    confidence: float
    seed: int
    win_matrix: list[list[float]]  # win_matrix[i][j] = predicted P(models[i] beats models[j])

    def win_probability(self, model: str, opponent: str) -> float:
        return self.win_matrix[self.models.index(model)][self.models.index(opponent)]

    def to_dict(self) -> dict[str, Any]:
        """The `leaderboard` section layout expected by `report.write_report`."""
        return {
            "anchor": self.anchor,
            "anchor_rating": self.anchor_rating,
            "n_battles": self.n_battles,
            "n_bootstrap": self.n_bootstrap,
            "confidence": self.confidence,
            "seed": self.seed,
            "ratings": [
                {"model": m, "rating": self.ratings[m], "ci_low": self.ci_low[m], "ci_high": self.ci_high[m],
                 "n_battles": self.battles_per_model[m]}
                for m in self.models
            ],
            "win_matrix": {"models": list(self.models), "probabilities": [list(r) for r in self.win_matrix]},
        }


# ----------------------------------------------------------------------------- parsing

def parse_battle(record: Any, where: str) -> Battle:
    if isinstance(record, Battle):
        record = asdict(record)
    if not isinstance(record, Mapping):
        raise BattleError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field in ("model_a", "model_b", "winner"):
        if field not in record:
            raise BattleError(f"{where}: missing field '{field}'")
    for field in ("model_a", "model_b"):
        if not isinstance(record[field], str) or not record[field]:
            raise BattleError(f"{where}: field '{field}' must be a non-empty string, got {record[field]!r}")
    if record["model_a"] == record["model_b"]:
        raise BattleError(f"{where}: model_a and model_b are both {record['model_a']!r}")
    if record["winner"] not in WINNER_SCORES:
        # A judge failure has no place in a rating; count it where it happened, then drop it there.
        raise BattleError(f"{where}: field 'winner' must be 'a', 'b' or 'tie', got {record['winner']!r}")
    return Battle(record["model_a"], record["model_b"], record["winner"])


def validate_battles(records: Iterable[Any], source: str = "battles") -> list[Battle]:
    return [parse_battle(r, f"{source}[{i}]") for i, r in enumerate(records)]


def load_battles(path: str | Path) -> list[Battle]:
    """Read battles from a file (JSONL, JSON, Parquet, CSV); errors name the file and line."""
    return [parse_battle(record.data, f"{record.path}:{record.line}") for record in read_records(path)]


# ----------------------------------------------------------------------------- fitting

def fit_strengths(
    index_a: np.ndarray, index_b: np.ndarray, scores: np.ndarray, n_models: int, *,
    weights: np.ndarray | None = None, l2: float = 1e-4, start: np.ndarray | None = None,
    max_iter: int = 100, tol: float = 1e-9,
) -> np.ndarray:
    """Bradley-Terry log-strengths by Newton's method.

    scores[k] is 1 / 0.5 / 0 for battle k from model_a's side; weights[k] counts how often the
    battle is used (the bootstrap resamples by weight). The small ridge `l2` keeps an unbeaten
    model's strength finite; it does not change the ordering and shifts ratings negligibly
    once every model has both won and lost.
    """
    weights = np.ones(len(scores)) if weights is None else weights
    # Sum battles into per-pair totals so each Newton step is O(models^2), not O(battles).
    games = np.zeros((n_models, n_models))
    won = np.zeros((n_models, n_models))
    np.add.at(games, (index_a, index_b), weights)
    np.add.at(won, (index_a, index_b), weights * scores)
    games, won = games + games.T, won + (games.T - won.T)  # won[i, j]: score of i against j

    def loss(t: np.ndarray) -> float:
        diff = t[:, None] - t[None, :]
        return float(np.sum(games * np.logaddexp(0.0, diff) - won * diff) / 2 + 0.5 * l2 * np.sum(t * t))

    def gradient_and_hessian(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = sigmoid(t[:, None] - t[None, :])
        curvature = games * probs * (1 - probs)
        return np.sum(games * probs - won, axis=1) + l2 * t, np.diag(curvature.sum(axis=1) + l2) - curvature

    return minimize_newton(loss, gradient_and_hessian, np.zeros(n_models) if start is None else start,
                           max_iter=max_iter, tol=tol, what="Bradley-Terry fit")


def _check_connected(models: list[str], index_a: np.ndarray, index_b: np.ndarray) -> None:
    """Models in separate groups that never met have no common scale; refuse to invent one."""
    parent = list(range(len(models)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(index_a, index_b):
        parent[root(a)] = root(b)
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(models):
        groups.setdefault(root(i), []).append(name)
    if len(groups) > 1:
        listing = "; ".join(", ".join(g) for g in groups.values())
        raise BattleError(f"the battles split the models into {len(groups)} groups that never meet: {listing}")


def bradley_terry(
    battles: Iterable[Any],
    *,
    anchor: str | None = None,
    anchor_rating: float = 1000.0,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    l2: float = 1e-4,
) -> Leaderboard:
    """Fit ratings, bootstrap percentile intervals and the predicted win-rate matrix.

    anchor: the model pinned at `anchor_rating`; default the alphabetically first model.
    """
    battles = [b if isinstance(b, Battle) else parse_battle(b, f"battles[{i}]") for i, b in enumerate(battles)]
    if not battles:
        raise BattleError("no battles given")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    models = sorted({b.model_a for b in battles} | {b.model_b for b in battles})
    anchor = models[0] if anchor is None else anchor
    if anchor not in models:
        raise BattleError(f"anchor model {anchor!r} has no battles; models: {models}")
    position = {m: i for i, m in enumerate(models)}
    index_a = np.array([position[b.model_a] for b in battles])
    index_b = np.array([position[b.model_b] for b in battles])
    scores = np.array([WINNER_SCORES[b.winner] for b in battles])
    _check_connected(models, index_a, index_b)

    theta = fit_strengths(index_a, index_b, scores, len(models), l2=l2)
    ratings = anchor_rating + ELO_PER_LOGIT * (theta - theta[position[anchor]])

    rng = np.random.default_rng(seed)
    samples = np.empty((n_bootstrap, len(models)))
    for s in range(n_bootstrap):
        weights = np.bincount(rng.integers(0, len(battles), len(battles)), minlength=len(battles)).astype(float)
        boot = fit_strengths(index_a, index_b, scores, len(models), weights=weights, l2=l2, start=theta)
        samples[s] = anchor_rating + ELO_PER_LOGIT * (boot - boot[position[anchor]])
    tail = (1 - confidence) / 2 * 100
    if n_bootstrap:
        low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    else:
        low, high = ratings.copy(), ratings.copy()

    order = sorted(range(len(models)), key=lambda i: (-ratings[i], models[i]))
    ranked = [models[i] for i in order]
    ranked_theta = theta[order]
    win_matrix = sigmoid(ranked_theta[:, None] - ranked_theta[None, :])
    np.fill_diagonal(win_matrix, 0.5)
    counts = np.bincount(np.concatenate([index_a, index_b]), minlength=len(models))
    return Leaderboard(
        models=ranked,
        ratings={models[i]: float(ratings[i]) for i in order},
        ci_low={models[i]: float(low[i]) for i in order},
        ci_high={models[i]: float(high[i]) for i in order},
        battles_per_model={models[i]: int(counts[i]) for i in order},
        anchor=anchor,
        anchor_rating=anchor_rating,
        n_battles=len(battles),
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        win_matrix=win_matrix.tolist(),
    )
