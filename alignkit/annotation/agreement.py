"""Inter-annotator agreement: Cohen's kappa per pair, Fleiss' kappa, Krippendorff's alpha, agreement with the majority.

`agreement(labels, level)` takes (item_id, annotator, label) triples and returns an `Agreement`
whose `to_dict()` is JSON-ready (and, with a "task" key added, an entry of the report's
"agreement" section). The statistics come from scikit-learn, statsmodels and krippendorff;
sklearn and statsmodels take about a second to import, so they are imported only when needed.

A figure that is undefined for the data (one category only, too few shared items, ...) is None,
never NaN and never an exception.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Hashable, Iterable

from alignkit.evaluation.report import AGREEMENT_LEVELS as LEVELS

_COHEN_WEIGHTS = {"nominal": None, "ordinal": "linear", "interval": "quadratic"}
# Interval kappa fills the integer gaps between the lowest and highest label (see _cohen_scale); past this
# many categories the confusion matrix would be needlessly large, so observed values are used as they are.
_MAX_FILLED_SCALE = 1000


@dataclass
class Agreement:
    level: str
    annotators: list[str]  # sorted
    n_items: int  # items with labels from at least two annotators
    n_labels: int  # all labels given
    cohen_kappa: list[list[float | None]]  # [i][j] over the items both labelled; diagonal 1.0
    shared_items: list[list[int]]  # [i][j] how many items i and j both labelled ([i][i]: how many i labelled)
    fleiss_kappa: float | None
    fleiss_items: int  # items Fleiss' kappa was computed over
    krippendorff_alpha: float | None
    with_majority: dict[str, float | None]  # annotator -> share agreeing with the others' majority
    with_majority_items: dict[str, int]  # annotator -> how many items that share is over

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, float):
        return float(value)  # numpy float64 is a float subclass; JSON writers want the plain type
    return value


def agreement(labels: Iterable[tuple[str, str, Hashable]], level: str = "nominal") -> Agreement:
    """Agreement statistics of `labels`, (item_id, annotator, label) triples.

    level: "nominal" (labels are any hashable: "1", "tie", "both_bad", ...), "ordinal" or
    "interval" (labels are numbers). It sets Cohen's kappa weights (none, linear, quadratic) and
    Krippendorff's level of measurement; Fleiss' kappa always treats labels as nominal categories.

    - cohen_kappa[i][j]: over the items both i and j labelled, with every label seen as a possible
      category; None when they share fewer than 2 items or kappa is undefined (both gave one and
      the same label throughout). Ordinal weights are by rank among the labels seen; interval
      weights by squared value difference (integer labels: gaps on the scale count).
    - fleiss_kappa: Fleiss needs the same number of labels per item, so it is computed over the
      items carrying the most common label count among items with >= 2 labels (a tie: the larger
      count); fleiss_items says how many.
    - krippendorff_alpha: over all items with >= 2 labels, missing labels allowed.
    - with_majority[a]: over the items a labelled that someone else labelled too, the share where a's
      label equals the most common label of the others; items where the others tie are left out.

    Raises ValueError for an unknown level, a malformed triple, a second label for the same
    (item, annotator), or a non-numeric label at the ordinal or interval level.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {list(LEVELS)}, got {level!r}")
    table = _collect(labels, level)
    annotators = sorted({annotator for by_annotator in table.values() for annotator in by_annotator})
    multi = {item: by_annotator for item, by_annotator in table.items() if len(by_annotator) >= 2}
    categories = _sorted_categories({label for by_annotator in table.values() for label in by_annotator.values()})
    kappa, shared = _cohen_matrix(table, annotators, categories, level)
    fleiss, fleiss_items = _fleiss(multi, categories)
    majority, majority_items = _with_majority(table, annotators)
    return Agreement(
        level=level, annotators=annotators, n_items=len(multi),
        n_labels=sum(len(by_annotator) for by_annotator in table.values()), cohen_kappa=kappa, shared_items=shared,
        fleiss_kappa=fleiss, fleiss_items=fleiss_items, krippendorff_alpha=_krippendorff(multi, annotators, categories, level),
        with_majority=majority, with_majority_items=majority_items,
    )


def _collect(labels: Iterable[tuple[str, str, Hashable]], level: str) -> dict[Hashable, dict[str, Hashable]]:
    """{item: {annotator: label}}, items in the order first seen."""
    table: dict[Hashable, dict[str, Hashable]] = {}
    for index, triple in enumerate(labels):
        if not isinstance(triple, (tuple, list)) or len(triple) != 3:
            raise ValueError(f"label {index}: expected (item_id, annotator, label), got {triple!r}")
        item, annotator, label = triple
        if not isinstance(annotator, str):
            raise ValueError(f"label {index}: annotator must be a string, got {annotator!r}")
        try:
            hash(item), hash(label)
        except TypeError:
            raise ValueError(f"label {index}: item id and label must be hashable, got {item!r} and {label!r}") from None
        if level != "nominal" and not _is_finite_number(label):
            raise ValueError(f"label {index}: {level} labels must be finite numbers, got {label!r} "
                             f"(item {item!r}, annotator {annotator!r})")
        by_annotator = table.setdefault(item, {})
        if annotator in by_annotator:
            raise ValueError(f"annotator {annotator!r} labelled item {item!r} twice: {by_annotator[annotator]!r} "
                             f"and {label!r}")
        by_annotator[annotator] = label
    return table


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _sorted_categories(values: set) -> list:
    try:
        return sorted(values)
    except TypeError:  # nominal labels of mixed types ("1" and 2) have no natural order; any fixed one will do
        return sorted(values, key=lambda v: (type(v).__name__, repr(v)))


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- Cohen's kappa

def _cohen_scale(categories: list, level: str) -> list:
    """The category list handed to sklearn. Its weights use positions in this list, not label values,
    so for interval labels that are integers the gaps are filled in: then position differences equal
    value differences and a pair rating 1 vs 5 weighs more than 1 vs 2 even if nobody used 2..4."""
    if level == "interval" and categories and all(float(c).is_integer() for c in categories):
        low, high = int(categories[0]), int(categories[-1])
        if high - low < _MAX_FILLED_SCALE:
            return list(range(low, high + 1))
    return categories


def _cohen_matrix(table: dict, annotators: list[str], categories: list,
                  level: str) -> tuple[list[list[float | None]], list[list[int]]]:
    size = len(annotators)
    kappa: list[list[float | None]] = [[1.0 if i == j else None for j in range(size)] for i in range(size)]
    shared = [[0] * size for _ in range(size)]
    scale = _cohen_scale(categories, level)
    code = {category: position for position, category in enumerate(scale)}
    for i, first in enumerate(annotators):
        shared[i][i] = sum(first in by_annotator for by_annotator in table.values())
        for j in range(i + 1, size):
            second = annotators[j]
            pairs = [(by_annotator[first], by_annotator[second]) for by_annotator in table.values()
                     if first in by_annotator and second in by_annotator]
            shared[i][j] = shared[j][i] = len(pairs)
            if len(pairs) >= 2:
                value = _cohen([code[a] for a, _ in pairs], [code[b] for _, b in pairs], len(scale), level)
                kappa[i][j] = kappa[j][i] = value
    return kappa, shared


def _cohen(first: list[int], second: list[int], n_categories: int, level: str) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        # an undefined kappa comes back as NaN with a warning; it is reported as None instead
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(first, second, labels=list(range(n_categories)), weights=_COHEN_WEIGHTS[level])
    return _finite_or_none(value)


# ----------------------------------------------------------------------------- Fleiss' kappa

def _fleiss(multi: dict[Hashable, dict[str, Hashable]], categories: list) -> tuple[float | None, int]:
    if not multi:
        return None, 0
    counts = Counter(len(by_annotator) for by_annotator in multi.values())
    raters = max(counts, key=lambda count: (counts[count], count))
    code = {category: position for position, category in enumerate(categories)}
    rows = [[code[label] for label in by_annotator.values()] for by_annotator in multi.values()
            if len(by_annotator) == raters]
    import numpy as np
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    # n_cat makes every label seen a column, even one that none of these items received
    counts_table, _ = aggregate_raters(np.asarray(rows, dtype=int), n_cat=len(categories))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one category only: 0/0, reported as None
        value = fleiss_kappa(counts_table, method="fleiss")
    return _finite_or_none(value), len(rows)


# ----------------------------------------------------------------------------- Krippendorff's alpha

def _krippendorff(multi: dict[Hashable, dict[str, Hashable]], annotators: list[str], categories: list,
                  level: str) -> float | None:
    if not multi:
        return None
    import krippendorff
    import numpy as np

    code = {category: position for position, category in enumerate(categories)}
    data = np.full((len(annotators), len(multi)), np.nan)
    row = {annotator: i for i, annotator in enumerate(annotators)}
    for column, by_annotator in enumerate(multi.values()):
        for annotator, label in by_annotator.items():
            # the library wants numbers: nominal labels become codes, which nominal alpha cannot tell from labels
            data[row[annotator], column] = code[label] if level == "nominal" else float(label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
    except (ValueError, ZeroDivisionError, FloatingPointError):  # e.g. "more than one value in the domain"
        return None
    return _finite_or_none(value)


# ----------------------------------------------------------------------------- agreement with the majority

def _with_majority(table: dict, annotators: list[str]) -> tuple[dict[str, float | None], dict[str, int]]:
    agreed = dict.fromkeys(annotators, 0)
    counted = dict.fromkeys(annotators, 0)
    for by_annotator in table.values():
        if len(by_annotator) < 2:
            continue
        for annotator, label in by_annotator.items():
            others = Counter(other for name, other in by_annotator.items() if name != annotator).most_common(2)
            if len(others) == 2 and others[0][1] == others[1][1]:
                continue  # the others split evenly: there is no majority to agree with
            counted[annotator] += 1
            agreed[annotator] += label == others[0][0]
    rates = {a: (agreed[a] / counted[a] if counted[a] else None) for a in annotators}
    return rates, counted
