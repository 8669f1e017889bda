"""Win rate of a model against a reference, from per-item pairwise judge verdicts.

A verdict record (one per evaluated item and judge order) is
    {"id": str, "winner": "model" | "reference" | "tie" | None,
     "len_model": int, "len_reference": int}
where `winner` is already expressed in model/reference terms (the judge code undoes any
position swap) and None means the judge's answer could not be parsed.

Scoring: a model win scores 1, a tie 0.5, a loss 0. Failures (None) never score: they are
left out of the rate and reported as `failures` / `failure_rate`.

Both judge orders: pass the records of the second order as `swapped`. Items are paired by
id; an item's score is the mean of its two order scores (so disagreeing orders make a tie)
and an item counts as a failure if either order failed, because keeping only the surviving
order would bring back the position bias that two orders exist to cancel.

Length control: a logistic regression of the item score on
tanh((len_model - len_reference) / scale) plus an intercept; the length-controlled win rate
is the fitted probability at zero length difference, i.e. sigmoid(intercept). When the data
cannot support that fit (no scored items, no more items than coefficients, the same length
difference everywhere) it is unavailable: None, with the reason as its note. The raw figures
never depend on it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from alignkit.data.readers import read_records
from alignkit.evaluation.newton import minimize_newton, sigmoid

WINNER_SCORES: dict[str, float] = {"model": 1.0, "tie": 0.5, "reference": 0.0}
Z_95 = 1.959963984540054


class VerdictError(ValueError):
    """A verdict record is malformed; the message names where and which field."""


@dataclass(frozen=True)
class Verdict:
    id: str
    winner: str | None  # "model" | "reference" | "tie" | None (unparseable judge answer)
    len_model: int
    len_reference: int


@dataclass
class WinRate:
    win_rate: float | None  # None when no item could be scored
    standard_error: float | None  # of the mean of per-item scores; None below 2 scored items
    ci_low: float | None  # normal interval, clipped to [0, 1]
    ci_high: float | None
    n_items: int
    n_scored: int
    failures: int  # items left out because a verdict could not be parsed
    failure_rate: float
    wins: int  # verdicts (not items) among scored items; two per item with both orders
    ties: int
    losses: int
    orders: int  # 1, or 2 when both judge orders were combined
    order_agreement: float | None  # share of scored items whose two orders agree (2 orders only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LengthControlledWinRate:
    lc_win_rate: float | None  # None when the length effect cannot be separated (see `note`)
    standard_error: float | None  # delta method on a sandwich covariance
    ci_low: float | None  # interval on the logit scale, mapped back
    ci_high: float | None
    intercept: float | None  # logit scale
    length_coef: float | None  # logit change per unit of tanh(length difference / scale)
    length_scale: float | None
    n_scored: int
    failures: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- parsing

def parse_verdict(record: Any, where: str) -> Verdict:
    """Check one record against the verdict schema; `where` prefixes every error message."""
    if isinstance(record, Verdict):
        record = asdict(record)
    if not isinstance(record, Mapping):
        raise VerdictError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field in ("id", "winner", "len_model", "len_reference"):
        if field not in record:
            raise VerdictError(f"{where}: missing field '{field}'")
    item_id = record["id"]
    if not isinstance(item_id, str) or not item_id:
        raise VerdictError(f"{where}: field 'id' must be a non-empty string, got {item_id!r}")
    winner = record["winner"]
    if winner is not None and winner not in WINNER_SCORES:
        raise VerdictError(
            f"{where} (id {item_id!r}): field 'winner' must be 'model', 'reference', 'tie' or null, "
            f"got {winner!r}")
    for field in ("len_model", "len_reference"):
        value = record[field]
        # bool is an int subclass; a True length is a bug upstream, not a length of 1
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise VerdictError(
                f"{where} (id {item_id!r}): field '{field}' must be a non-negative integer, got {value!r}")
    return Verdict(item_id, winner, record["len_model"], record["len_reference"])


def validate_verdicts(records: Iterable[Any], source: str = "records") -> list[Verdict]:
    """Parse in-memory records; errors read like `records[3] (id 'q7'): field 'winner' ...`."""
    verdicts = [parse_verdict(r, f"{source}[{i}]") for i, r in enumerate(records)]
    _check_unique_ids(verdicts, source)
    return verdicts


def load_verdicts(path: str | Path) -> list[Verdict]:
    """Read verdict records from a file (JSONL, JSON, Parquet, CSV); errors name the file and line."""
    verdicts = [parse_verdict(record.data, f"{record.path}:{record.line}") for record in read_records(path)]
    _check_unique_ids(verdicts, str(path))
    return verdicts


def _check_unique_ids(verdicts: Sequence[Verdict], source: str) -> None:
    seen: set[str] = set()
    for verdict in verdicts:
        if verdict.id in seen:
            raise VerdictError(f"{source}: id {verdict.id!r} appears more than once")
        seen.add(verdict.id)


def _as_verdicts(records: Iterable[Any], source: str) -> list[Verdict]:
    records = list(records)
    if all(isinstance(r, Verdict) for r in records):
        _check_unique_ids(records, source)
        return records
    return validate_verdicts(records, source)


# ----------------------------------------------------------------------------- per-item scores

@dataclass
class _Items:
    scores: np.ndarray  # per scored item, in [0, 1]
    length_diffs: np.ndarray  # len_model - len_reference per scored item
    n_items: int
    failures: int
    counts: dict[str, int]  # verdict counts among scored items
    orders: int
    order_agreement: float | None


def _item_scores(records: Iterable[Any], swapped: Iterable[Any] | None) -> _Items:
    first = _as_verdicts(records, "records")
    if swapped is None:
        scored = [v for v in first if v.winner is not None]
        return _Items(
            scores=np.array([WINNER_SCORES[v.winner] for v in scored], dtype=float),
            length_diffs=np.array([v.len_model - v.len_reference for v in scored], dtype=float),
            n_items=len(first),
            failures=len(first) - len(scored),
            counts=_count(v.winner for v in scored),
            orders=1,
            order_agreement=None,
        )

    second = {v.id: v for v in _as_verdicts(swapped, "swapped")}
    first_ids = {v.id for v in first}
    only_first = sorted(first_ids - second.keys())
    only_second = sorted(second.keys() - first_ids)
    if only_first or only_second:
        raise VerdictError(
            "both judge orders must cover the same ids; "
            f"only in records: {only_first[:5]}{'...' if len(only_first) > 5 else ''}, "
            f"only in swapped: {only_second[:5]}{'...' if len(only_second) > 5 else ''}")
    scores, diffs, winners = [], [], []
    agreeing = 0
    for a in first:
        b = second[a.id]
        if (a.len_model, a.len_reference) != (b.len_model, b.len_reference):
            raise VerdictError(
                f"id {a.id!r}: the two judge orders report different lengths "
                f"({a.len_model}/{a.len_reference} vs {b.len_model}/{b.len_reference}); "
                "they must judge the same pair of responses")
        if a.winner is None or b.winner is None:
            continue
        scores.append((WINNER_SCORES[a.winner] + WINNER_SCORES[b.winner]) / 2)
        diffs.append(a.len_model - a.len_reference)
        winners += [a.winner, b.winner]
        agreeing += a.winner == b.winner
    return _Items(
        scores=np.array(scores, dtype=float),
        length_diffs=np.array(diffs, dtype=float),
        n_items=len(first),
        failures=len(first) - len(scores),
        counts=_count(winners),
        orders=2,
        order_agreement=agreeing / len(scores) if scores else None,
    )


def _count(winners: Iterable[str]) -> dict[str, int]:
    counts = {name: 0 for name in WINNER_SCORES}
    for winner in winners:
        counts[winner] += 1
    return counts


def _standard_error(scores: np.ndarray) -> float | None:
    if len(scores) < 2:
        return None
    return float(np.std(scores, ddof=1) / math.sqrt(len(scores)))


# ----------------------------------------------------------------------------- raw win rate

def win_rate(records: Iterable[Any], swapped: Iterable[Any] | None = None, *, z: float = Z_95) -> WinRate:
    """Win rate (wins 1, ties 0.5) over parseable items, with SE of the mean and a normal CI."""
    items = _item_scores(records, swapped)
    n_scored = len(items.scores)
    rate = float(items.scores.mean()) if n_scored else None
    se = _standard_error(items.scores)
    ci_low = ci_high = None
    if rate is not None and se is not None:
        ci_low, ci_high = max(0.0, rate - z * se), min(1.0, rate + z * se)
    return WinRate(
        win_rate=rate,
        standard_error=se,
        ci_low=ci_low,
        ci_high=ci_high,
        n_items=items.n_items,
        n_scored=n_scored,
        failures=items.failures,
        failure_rate=items.failures / items.n_items if items.n_items else 0.0,
        wins=items.counts["model"],
        ties=items.counts["tie"],
        losses=items.counts["reference"],
        orders=items.orders,
        order_agreement=items.order_agreement,
    )


# ----------------------------------------------------------------------------- length control

def fit_logistic(
    features: np.ndarray, targets: np.ndarray, penalty: np.ndarray, *, max_iter: int = 100, tol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray]:
    """Penalised logistic regression with fractional targets, by damped Newton steps.

    A target y in [0, 1] is the same as a win with weight y plus a loss with weight 1 - y,
    which is how ties (0.5) enter. `penalty` is the ridge weight per coefficient.
    Returns (coefficients, sandwich covariance). The sandwich form uses each item's actual
    spread around its fit, so a tie counts as less noisy than a coin flip.
    Raises ValueError unless there are more rows than coefficients (the covariance divides by
    n - k), np.linalg.LinAlgError for a singular Hessian and RuntimeError when Newton does not converge.
    """
    n, k = features.shape
    if n <= k:
        raise ValueError(f"fit_logistic needs more rows than coefficients, got {n} rows for {k}")
    if not (np.all(np.isfinite(features)) and np.all((targets >= 0) & (targets <= 1))):
        raise ValueError("fit_logistic needs finite features and targets in [0, 1]")

    def loss(b: np.ndarray) -> float:
        eta = features @ b
        return float(np.sum(np.logaddexp(0.0, eta) - targets * eta) + 0.5 * np.sum(penalty * b * b))

    def gradient_and_hessian(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = sigmoid(features @ b)
        hessian = (features * (probs * (1 - probs))[:, None]).T @ features + np.diag(penalty)
        return features.T @ (probs - targets) + penalty * b, hessian

    beta = minimize_newton(loss, gradient_and_hessian, np.zeros(k), max_iter=max_iter, tol=tol,
                           what="logistic regression")
    _, hessian = gradient_and_hessian(beta)
    per_item = features * (targets - sigmoid(features @ beta))[:, None]
    bread = np.linalg.inv(hessian)
    # n / (n - k) is the usual small-sample correction; with an intercept only it makes the
    # standard error equal to the ddof=1 standard error of the mean.
    covariance = bread @ (per_item.T @ per_item) @ bread * (n / (n - k))
    return beta, covariance


def length_controlled_win_rate(
    records: Iterable[Any],
    swapped: Iterable[Any] | None = None,
    *,
    length_scale: float | None = None,
    slope_penalty: float = 1e-2,
    z: float = Z_95,
) -> LengthControlledWinRate:
    """Win rate predicted at zero length difference by a logistic fit on the length difference.

    length_scale: the length difference that maps to tanh(1); default the standard deviation
    of the observed differences, so the feature is scale-free. tanh keeps a few very long
    answers from dominating the fit.
    slope_penalty: a small ridge on the length coefficient only; it keeps the fit finite when
    wins are perfectly explained by length and is negligible otherwise. The intercept is not
    penalised, so with equal lengths the result is exactly the raw win rate.
    """
    items = _item_scores(records, swapped)
    scores, diffs, n = items.scores, items.length_diffs, len(items.scores)

    def result(rate: float | None, se: float | None, lo: float | None, hi: float | None,
               intercept: float | None, coef: float | None, scale: float | None, note: str = "") -> LengthControlledWinRate:
        return LengthControlledWinRate(rate, se, lo, hi, intercept, coef, scale, n, items.failures, note)

    def unavailable(reason: str, scale: float | None = None) -> LengthControlledWinRate:
        return result(None, None, None, None, None, None, scale, reason)

    if n == 0:
        return unavailable("no scored items")
    if length_scale is None:
        length_scale = float(np.std(diffs)) if np.std(diffs) > 0 else 1.0
    elif length_scale <= 0:
        raise ValueError(f"length_scale must be positive, got {length_scale}")
    columns, reason = _length_design(diffs, length_scale)
    if columns is None:
        return unavailable(reason, length_scale)

    rate_raw = float(scores.mean())
    if rate_raw in (0.0, 1.0):
        # All losses or all wins: the intercept runs to infinity whatever the length says.
        return result(rate_raw, 0.0, rate_raw, rate_raw, None, None, length_scale,
                      "all scored items have the same outcome")

    penalty = np.zeros(columns.shape[1])
    penalty[1:] = slope_penalty
    try:
        beta, covariance = fit_logistic(columns, scores, penalty)
    except (np.linalg.LinAlgError, RuntimeError) as error:
        return unavailable(f"the logistic fit failed ({error})", length_scale)
    if not (np.all(np.isfinite(beta)) and np.all(np.isfinite(covariance))):
        return unavailable("the logistic fit gave non-finite numbers", length_scale)
    rate = float(sigmoid(beta[0]))
    se_logit = math.sqrt(max(covariance[0, 0], 0.0))
    return result(
        rate,
        rate * (1 - rate) * se_logit,
        float(sigmoid(beta[0] - z * se_logit)),
        float(sigmoid(beta[0] + z * se_logit)),
        float(beta[0]),
        float(beta[1]) if len(beta) > 1 else 0.0,
        length_scale,
    )


def _length_design(diffs: np.ndarray, length_scale: float) -> tuple[np.ndarray | None, str]:
    """The columns of the length fit, or None and the reason no fit can separate length from quality.

    Checked before fitting, since a fit on too few items or a constant column has no unique answer.
    """
    n = len(diffs)
    feature = np.tanh(diffs / length_scale)
    if np.all(diffs == 0):
        columns = np.ones((n, 1))  # equal lengths: the intercept alone, i.e. the raw win rate
    elif np.ptp(diffs) == 0:
        return None, f"every length difference is {diffs[0]:+g}, so length and model quality cannot be separated"
    elif np.ptp(feature) == 0:
        return None, (f"tanh(length difference / {length_scale:g}) is the same for every item; "
                      "a larger length scale is needed")
    else:
        columns = np.column_stack([np.ones(n), feature])
    k = columns.shape[1]
    if n <= k:
        return None, (f"{n} scored item{'s' if n != 1 else ''} for {k} coefficient{'s' if k != 1 else ''}; "
                      "the fit needs more items than coefficients")
    return columns, ""


# ----------------------------------------------------------------------------- report entry

def win_rate_entry(
    model: str, records: Iterable[Any], swapped: Iterable[Any] | None = None, *, reference: str | None = None,
) -> dict[str, Any]:
    """Raw and length-controlled win rates as one `win_rates` entry for `report.write_report`."""
    records = list(records)
    swapped = list(swapped) if swapped is not None else None
    raw = win_rate(records, swapped)
    lc = length_controlled_win_rate(records, swapped)
    entry: dict[str, Any] = {"model": model}
    if reference is not None:
        entry["reference"] = reference
    entry.update(raw.to_dict())
    entry.update({
        "lc_win_rate": lc.lc_win_rate,
        "lc_standard_error": lc.standard_error,
        "lc_ci_low": lc.ci_low,
        "lc_ci_high": lc.ci_high,
        "lc_length_coef": lc.length_coef,
        "lc_note": lc.note,
    })
    return entry
