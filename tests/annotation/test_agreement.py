"""Each figure is checked against its textbook formula worked out here, independently of the libraries."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from itertools import permutations

import pytest

from alignkit.annotation.agreement import LEVELS, Agreement, agreement


def cohen_by_hand(first: list, second: list, categories: list, distance=lambda i, j: float(i != j)) -> float:
    """1 - sum(w * observed) / sum(w * expected) over category positions; unweighted when w = [i != j]."""
    n, size = len(first), len(categories)
    where = {c: k for k, c in enumerate(categories)}
    observed = [[0.0] * size for _ in range(size)]
    for a, b in zip(first, second):
        observed[where[a]][where[b]] += 1 / n
    rows = [sum(observed[i]) for i in range(size)]
    cols = [sum(observed[i][j] for i in range(size)) for j in range(size)]
    disagreement = sum(distance(i, j) * observed[i][j] for i in range(size) for j in range(size))
    chance = sum(distance(i, j) * rows[i] * cols[j] for i in range(size) for j in range(size))
    return 1 - disagreement / chance


def fleiss_by_hand(counts: list[list[int]]) -> float:
    """P_bar (mean pairwise agreement per item) against P_e (sum of squared category shares)."""
    raters = sum(counts[0])
    p_items = [(sum(c * c for c in row) - raters) / (raters * (raters - 1)) for row in counts]
    p_bar = sum(p_items) / len(counts)
    shares = [sum(row[j] for row in counts) / (len(counts) * raters) for j in range(len(counts[0]))]
    p_e = sum(s * s for s in shares)
    return (p_bar - p_e) / (1 - p_e)


def alpha_by_hand(units: list[list], distance) -> float:
    """Krippendorff's alpha from the coincidence matrix: each unit with m >= 2 values adds 1/(m-1) per
    ordered pair of values from different coders; alpha = 1 - (n-1) * sum o_ck d_ck / sum n_c n_k d_ck."""
    units = [u for u in units if len(u) >= 2]
    coincidence: Counter = Counter()
    for values in units:
        for a, b in permutations(range(len(values)), 2):
            coincidence[values[a], values[b]] += 1 / (len(values) - 1)
    margins: Counter = Counter()
    for (c, _), weight in coincidence.items():
        margins[c] += weight
    n = sum(margins.values())
    observed = sum(w * distance(c, k) for (c, k), w in coincidence.items())
    expected = sum(margins[c] * margins[k] * distance(c, k) for c in margins for k in margins)
    return 1 - (n - 1) * observed / expected


def triples(rows: dict[str, list]) -> list[tuple]:
    """{annotator: [label or None per item]} -> (item, annotator, label) triples, None meaning no label."""
    return [(f"item{i}", name, label) for name, row in rows.items() for i, label in enumerate(row) if label is not None]


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the 4 coders x 12 units example with
# missing values; the paper gives alpha 0.743 (nominal), 0.815 (ordinal), 0.849 (interval).
_ = None
KRIPPENDORFF_EXAMPLE = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],
    "C": [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],
}


def example_units() -> list[list[int]]:
    return [[row[i] for row in KRIPPENDORFF_EXAMPLE.values() if row[i] is not None] for i in range(12)]


# ============================================================================ Cohen's kappa

def test_cohen_kappa_on_a_two_by_two_table():
    # both yes 4, both no 3, first yes & second no 2, first no & second yes 1:
    # p_o = 0.7, p_e = 0.6 * 0.5 + 0.4 * 0.5 = 0.5, kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    first = ["yes"] * 4 + ["no"] * 3 + ["yes"] * 2 + ["no"]
    second = ["yes"] * 4 + ["no"] * 3 + ["no"] * 2 + ["yes"]
    result = agreement(triples({"ann": first, "bob": second}))
    assert result.annotators == ["ann", "bob"]
    assert result.cohen_kappa[0][1] == pytest.approx(0.4)
    assert result.cohen_kappa[1][0] == pytest.approx(0.4)
    assert result.cohen_kappa[0][0] == result.cohen_kappa[1][1] == 1.0
    assert result.shared_items == [[10, 10], [10, 10]]


def test_cohen_kappa_nominal_with_many_categories_matches_the_formula():
    first = ["1", "2", "tie", "both_bad", "1", "1", "2", "tie", "2", "1", "both_bad", "2"]
    second = ["1", "2", "tie", "1", "2", "1", "2", "2", "2", "tie", "both_bad", "1"]
    result = agreement(triples({"x": first, "y": second}))
    categories = sorted(set(first) | set(second))
    assert result.cohen_kappa[0][1] == pytest.approx(cohen_by_hand(first, second, categories))


def test_ordinal_kappa_uses_linear_weights_on_ranks_of_every_label_seen():
    # x and y never use 3, but z does: with 3 a category, 4 is three ranks above 1 rather than two
    x = [1, 2, 4, 4, 1, 2, 2, 4, 1, 1]
    y = [2, 2, 4, 1, 1, 4, 2, 4, 2, 1]
    z = [3, 3, 3, 3, 3, 3, 3, 3, 3, 1]
    result = agreement(triples({"x": x, "y": y, "z": z}), level="ordinal")
    linear = lambda i, j: abs(i - j)  # noqa: E731
    assert result.cohen_kappa[0][1] == pytest.approx(cohen_by_hand(x, y, [1, 2, 3, 4], linear))
    assert result.cohen_kappa[0][1] != pytest.approx(cohen_by_hand(x, y, [1, 2, 4], linear))
    assert result.cohen_kappa[0][2] == pytest.approx(cohen_by_hand(x, z, [1, 2, 3, 4], linear))


def test_interval_kappa_uses_squared_value_differences():
    # nobody uses 3 or 4: the weights must still see 5 as three steps above 2
    x = [1, 2, 5, 5, 1, 2, 2, 5, 1]
    y = [2, 2, 5, 1, 1, 5, 2, 5, 2]
    result = agreement(triples({"x": x, "y": y}), level="interval")
    values = [1, 2, 3, 4, 5]
    squared = lambda i, j: (values[i] - values[j]) ** 2  # noqa: E731
    assert result.cohen_kappa[0][1] == pytest.approx(cohen_by_hand(x, y, values, squared))
    by_rank = cohen_by_hand(x, y, [1, 2, 5], lambda i, j: (i - j) ** 2)
    assert result.cohen_kappa[0][1] != pytest.approx(by_rank)


def test_interval_kappa_with_fractional_values():
    x = [0.5, 1.5, 2.5, 0.5, 1.5]
    y = [0.5, 2.5, 2.5, 1.5, 1.5]
    result = agreement(triples({"x": x, "y": y}), level="interval")
    assert result.cohen_kappa[0][1] == pytest.approx(cohen_by_hand(x, y, [0.5, 1.5, 2.5], lambda i, j: (i - j) ** 2))


def test_kappa_is_over_shared_items_only_and_none_below_two():
    rows = {
        "a": ["x", "y", "x", "y", "x", None, None],
        "b": ["x", "y", "y", None, None, "x", None],
        "c": [None, None, None, None, "y", None, "x"],
    }
    result = agreement(triples(rows))
    assert result.annotators == ["a", "b", "c"]
    assert result.shared_items == [[5, 3, 1], [3, 4, 0], [1, 0, 2]]
    assert result.cohen_kappa[0][1] == pytest.approx(cohen_by_hand(["x", "y", "x"], ["x", "y", "y"], ["x", "y"]))
    assert result.cohen_kappa[0][2] is None and result.cohen_kappa[2][0] is None  # one shared item
    assert result.cohen_kappa[1][2] is None  # none shared
    assert result.n_items == 4  # items 0, 1, 2 and 4 have two labels or more
    assert result.n_labels == 11


# ============================================================================ Fleiss' kappa

# The Fleiss' kappa example on Wikipedia: 10 items, 14 raters, 5 categories; P_bar 0.378, P_e 0.213, kappa 0.210
FLEISS_COUNTS = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def labels_from_counts(counts: list[list[int]], categories: list) -> list[tuple]:
    out = []
    for item, row in enumerate(counts):
        given = [c for c, k in zip(categories, row) for _ in range(k)]
        out += [(item, f"rater{r:02d}", label) for r, label in enumerate(given)]
    return out


def test_fleiss_kappa_matches_p_bar_and_p_e():
    result = agreement(labels_from_counts(FLEISS_COUNTS, ["a", "b", "c", "d", "e"]))
    assert result.fleiss_kappa == pytest.approx(fleiss_by_hand(FLEISS_COUNTS))
    assert result.fleiss_kappa == pytest.approx(0.210, abs=5e-4)
    assert result.fleiss_items == 10 and result.n_items == 10 and len(result.annotators) == 14


def test_fleiss_kappa_is_nominal_whatever_the_level():
    categories = [1, 2, 3, 4, 5]
    for level in LEVELS[1:]:
        result = agreement(labels_from_counts(FLEISS_COUNTS, categories), level=level)
        assert result.fleiss_kappa == pytest.approx(fleiss_by_hand(FLEISS_COUNTS))


def test_fleiss_kappa_uses_the_most_common_label_count_and_the_larger_on_a_tie():
    rows = {  # items 0-1: three labels; items 2-3: two labels; items 4-6: one label (never counted)
        "a": ["x", "x", "x", "y", "x", "y", "x"],
        "b": ["x", "y", "y", "y", None, None, None],
        "c": ["x", "y", None, None, None, None, None],
    }
    result = agreement(triples(rows))
    assert result.fleiss_items == 2  # two items with 3 labels, two with 2: the tie goes to 3
    # every label seen is a category, here x and y; item 0: x x x, item 1: x y y
    assert result.fleiss_kappa == pytest.approx(fleiss_by_hand([[3, 0], [1, 2]]))
    assert result.fleiss_kappa != pytest.approx(fleiss_by_hand([[1, 1], [0, 2]]))  # the two-label items

    rows["d"] = [None, None, None, None, "y", "x", None]  # now four items carry two labels
    result = agreement(triples(rows))
    assert result.fleiss_items == 4
    assert result.fleiss_kappa == pytest.approx(fleiss_by_hand([[1, 1], [0, 2], [1, 1], [1, 1]]))


def test_fleiss_kappa_counts_categories_seen_only_outside_its_items():
    rows = {"a": ["x", "y", "x", "z"], "b": ["x", "y", "y", None]}
    result = agreement(triples(rows))
    # "z" appears only on a single-label item; as a zero column it changes nothing
    assert result.fleiss_kappa == pytest.approx(fleiss_by_hand([[2, 0, 0], [0, 2, 0], [1, 1, 0]]))


# ============================================================================ Krippendorff's alpha

def test_krippendorff_alpha_nominal_from_the_coincidence_matrix():
    labels = [(item, coder, f"v{value}") for item, coder, value in triples(KRIPPENDORFF_EXAMPLE)]
    result = agreement(labels)
    assert result.krippendorff_alpha == pytest.approx(alpha_by_hand(example_units(), lambda c, k: float(c != k)))
    assert result.krippendorff_alpha == pytest.approx(0.743, abs=5e-4)
    assert result.n_items == 11  # unit 12 has one value only


def test_krippendorff_alpha_interval_and_ordinal():
    interval = agreement(triples(KRIPPENDORFF_EXAMPLE), level="interval")
    assert interval.krippendorff_alpha == pytest.approx(alpha_by_hand(example_units(), lambda c, k: (c - k) ** 2))
    assert interval.krippendorff_alpha == pytest.approx(0.849, abs=5e-4)
    ordinal = agreement(triples(KRIPPENDORFF_EXAMPLE), level="ordinal")
    assert ordinal.krippendorff_alpha == pytest.approx(0.815, abs=5e-4)


# ============================================================================ agreement with the majority

def test_majority_is_leave_one_out_and_skips_ties_among_the_others():
    rows = {
        #     item0 item1 item2 item3 item4
        "a": ["x", "x", "x", "x", "y"],
        "b": ["x", "y", "x", "y", None],
        "c": ["y", "z", "y", None, None],
        "d": ["y", None, "x", None, None],
    }
    result = agreement(triples(rows))
    # item0 x x y y: each one's others are 2 against 1 for the other label, so all four disagree
    # item1 x y z: the others always tie 1-1, left out for everyone
    # item2 x x y x: a, b, d see x (2-1) and agree; c sees x 3-0 and disagrees
    # item3 x y: a sees y, b sees x: both disagree
    # item4: a alone, not counted
    assert result.with_majority_items == {"a": 3, "b": 3, "c": 2, "d": 2}
    assert result.with_majority["a"] == pytest.approx(1 / 3)
    assert result.with_majority["b"] == pytest.approx(1 / 3)
    assert result.with_majority["c"] == 0.0
    assert result.with_majority["d"] == pytest.approx(1 / 2)


def test_majority_compares_numeric_values():
    rows = {"a": [1, 2, 3], "b": [1.0, 2, 4], "c": [1, 5, 4]}
    result = agreement(triples(rows), level="interval")
    # item0: 1, 1.0 and 1 are one value, all agree
    # item1 (2, 2, 5): a and b see a 2-5 tie, left out; c sees 2 and disagrees
    # item2 (3, 4, 4): a sees 4 and disagrees; b and c see a 3-4 tie, left out
    assert result.with_majority_items == {"a": 2, "b": 1, "c": 2}
    assert result.with_majority == {"a": 0.5, "b": 1.0, "c": 0.5}


def test_annotator_without_overlap_has_no_majority_share():
    result = agreement(triples({"a": ["x", "y", None], "b": ["x", "x", None], "c": [None, None, "y"]}))
    assert result.with_majority == {"a": 0.5, "b": 0.5, "c": None}
    assert result.with_majority_items == {"a": 2, "b": 2, "c": 0}


# ============================================================================ edge cases

def test_perfect_agreement():
    rows = {"a": ["x", "y", "x", "y"], "b": ["x", "y", "x", "y"], "c": ["x", "y", "x", "y"]}
    result = agreement(triples(rows))
    assert all(k == pytest.approx(1.0) for row in result.cohen_kappa for k in row)
    assert result.fleiss_kappa == pytest.approx(1.0)
    assert result.krippendorff_alpha == pytest.approx(1.0)
    assert result.with_majority == {"a": 1.0, "b": 1.0, "c": 1.0}


@pytest.mark.parametrize("level", LEVELS)
def test_one_category_only_is_undefined(level):
    label = "same" if level == "nominal" else 3
    result = agreement(triples({"a": [label] * 4, "b": [label] * 4, "c": [label] * 3 + [None]}), level=level)
    assert result.cohen_kappa == [[1.0, None, None], [None, 1.0, None], [None, None, 1.0]]
    assert result.fleiss_kappa is None and result.fleiss_items == 3
    assert result.krippendorff_alpha is None
    assert result.with_majority == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_pair_with_one_shared_category_is_none_while_others_are_defined():
    rows = {"a": ["x", "x", "x"], "b": ["x", "x", "x"], "c": ["x", "y", "y"]}
    result = agreement(triples(rows))
    assert result.cohen_kappa[0][1] is None
    assert result.cohen_kappa[0][2] == pytest.approx(cohen_by_hand(rows["a"], rows["c"], ["x", "y"]))  # 0.0


def test_duplicate_label_names_both():
    with pytest.raises(ValueError, match="'ann'.*'item7'.*'tie'.*'both_bad'"):
        agreement([("item7", "ann", "tie"), ("item7", "bob", "1"), ("item7", "ann", "both_bad")])


@pytest.mark.parametrize("level", ["ordinal", "interval"])
@pytest.mark.parametrize("bad", ["3", True, float("nan"), None])
def test_numeric_levels_refuse_non_numbers(level, bad):
    with pytest.raises(ValueError, match=f"{level} labels must be finite numbers"):
        agreement([("i", "a", 1), ("i", "b", bad)], level=level)


def test_bad_arguments():
    with pytest.raises(ValueError, match="level must be one of"):
        agreement([], level="ratio")
    with pytest.raises(ValueError, match="label 1: expected \\(item_id, annotator, label\\)"):
        agreement([("i", "a", "x"), ("i", "b")])
    with pytest.raises(ValueError, match="annotator must be a string"):
        agreement([("i", 3, "x")])
    with pytest.raises(ValueError, match="must be hashable"):
        agreement([("i", "a", ["x"])])


def test_no_labels_and_one_annotator():
    empty = agreement([])
    assert empty == Agreement(level="nominal", annotators=[], n_items=0, n_labels=0, cohen_kappa=[], shared_items=[],
                              fleiss_kappa=None, fleiss_items=0, krippendorff_alpha=None, with_majority={},
                              with_majority_items={})
    alone = agreement([("i", "a", "x"), ("j", "a", "y")], level="nominal")
    assert alone.annotators == ["a"] and alone.n_items == 0 and alone.n_labels == 2
    assert alone.cohen_kappa == [[1.0]] and alone.shared_items == [[2]]
    assert alone.fleiss_kappa is None and alone.krippendorff_alpha is None
    assert alone.with_majority == {"a": None} and alone.with_majority_items == {"a": 0}


def test_to_dict_is_json_ready_with_exactly_the_fields():
    result = agreement(labels_from_counts(FLEISS_COUNTS[:4], ["a", "b", "c", "d", "e"]))
    data = result.to_dict()
    assert set(data) == {"level", "annotators", "n_items", "n_labels", "cohen_kappa", "shared_items", "fleiss_kappa",
                         "fleiss_items", "krippendorff_alpha", "with_majority", "with_majority_items"}
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert type(data["fleiss_kappa"]) is float and type(data["krippendorff_alpha"]) is float
    assert all(type(k) is float for row in data["cohen_kappa"] for k in row if k is not None)


def test_import_does_not_load_the_statistics_libraries():
    code = ("import sys, alignkit.annotation.agreement; "
            "print([m for m in ('sklearn', 'statsmodels', 'krippendorff') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
