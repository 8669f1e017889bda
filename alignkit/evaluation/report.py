"""One self-contained HTML evaluation report, plus a JSON file with every number in it.

`write_report(results, out_dir)` writes `report.html` (inline CSS and inline SVG charts drawn
here; no scripts, no links, and a Content-Security-Policy that forbids loading anything) and
`report.json` (the checked `results`, numbers unchanged). All text from `results` is escaped.

Schema of `results` (every section optional; rendered in this order). "rate" means a number
in [0, 1]; `?` marks an optional field, which may also be null. Objects with a `to_dict()`
method (WinRate, Leaderboard, ...) are accepted wherever their dict is. Unknown top-level
keys are an error, so a misspelt section is never silently missing; extra fields inside an
entry are kept in the JSON file but not drawn.

    "title": str
    "meta": {str: str | number | bool | null}            run information, shown as a list
    "win_rates": [                                        e.g. winrate.win_rate_entry(...)
        {"model": str, "reference": str?, "win_rate": rate | null, "ci_low": rate?,
         "ci_high": rate?, "standard_error": number?, "lc_win_rate": rate?, "lc_ci_low": rate?,
         "lc_ci_high": rate?, "n_scored": int?, "failures": int?, "failure_rate": rate?}]
    "leaderboard":                                        leaderboard.Leaderboard.to_dict()
        {"anchor": str, "anchor_rating": number, "confidence": rate?,
         "ratings": [{"model": str, "rating": number, "ci_low": number?, "ci_high": number?,
                      "n_battles": int?}],
         "win_matrix": {"models": [str], "probabilities": [[rate]]}?}
    "score_distributions": [                              one histogram per entry
        {"model": str, "label": str?, "scores": [number], "scale_min": int, "scale_max": int}]
    "score_vs_length":                                    one scatter plot, a colour per model
        {"length_unit": str?, "series": [{"model": str, "lengths": [number], "scores": [number]}]}
    "strategy_comparison": [                              judge meta-evaluation, one row each
        {"strategy": str, "dataset": str?, "accuracy_by_order": {order: rate},
         "mean_accuracy": rate, "positional_agreement": rate?, "parse_failure_rate": rate?,
         "n_items": int?}]
    "ifeval": [{"model": str, "prompt_strict": rate, "prompt_loose": rate,
                "instruction_strict": rate, "instruction_loose": rate, "n_prompts": int?}]
    "refusals": [                                         evaluation.refusal.report_entry(...), one per model
        {"model": str, "detector": str?, "refusal_rate": rate | null, "refusal_ci_low": rate?,
         "refusal_ci_high": rate?, "n_should_refuse": int, "refused": int, "failed_should_refuse": int?,
         "over_refusal_rate": rate | null, "over_refusal_ci_low": rate?, "over_refusal_ci_high": rate?,
         "n_should_answer": int, "over_refused": int, "failed_should_answer": int?,
         "per_category": [{"category": str, ...the same fields but model and detector}]?}]
        n_* count prompts; a rate is refused / (n - failed): failed detections are left out of it.
    "before_after": [{"metric": str, "before": number, "after": number,
                      "higher_is_better": bool?}]          missing: true; null: neither direction is better
    "curves": [                                           one line chart per entry (e.g. reward per step)
        {"title": str, "x_label": str, "y_label": str,
         "series": [{"name": str, "x": [number], "y": [number]}]}]
    "agreement": [                                        annotation.agreement.Agreement.to_dict() + "task"
        {"task": str, "level": "nominal" | "ordinal" | "interval", "n_items": int, "annotators": [str],
         "cohen_kappa": [[kappa | null]], "fleiss_kappa": kappa | null, "fleiss_items": int?,
         "krippendorff_alpha": kappa | null, "with_majority": {annotator: rate | null},
         "with_majority_items": {annotator: int}?, "n_labels": int?, "shared_items": [[int]]?}]
    "tables": [{"title": str, "columns": [str], "rows": [[str | number | bool | null]]}]

"kappa" means a number at most 1 (kappa and alpha go below 0 for worse than chance agreement);
cohen_kappa is a square matrix, a row per annotator in the order of "annotators".
Histogram bins are the integers scale_min..scale_max; a score goes to the nearest one.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from alignkit.atomic_write import write_json_atomic, write_text_atomic
from alignkit.evaluation.report_charts import (PALETTE, Mark, Row, esc, heat_matrix, histogram, horizontal_chart,
                                               html_table, line_chart, num, pct, scatter)

SECTIONS = ("win_rates", "leaderboard", "score_distributions", "score_vs_length", "strategy_comparison",
            "ifeval", "refusals", "before_after", "curves", "agreement", "tables")
TOP_LEVEL = ("title", "meta") + SECTIONS
FORMAT_VERSION = 1
# Levels of measurement of agreement figures (annotation.agreement computes them).
AGREEMENT_LEVELS = ("nominal", "ordinal", "interval")
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


class ReportError(ValueError):
    """`results` does not match the schema; the message gives the path to the bad value."""


# ============================================================================ checking input

def _to_plain(value: Any, where: str) -> Any:
    """JSON-ready copy of `value`: to_dict() objects unwrapped, numpy scalars to Python, NaN refused."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        value = value.tolist()  # scalars become Python numbers, arrays nested lists
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ReportError(f"{where}: {value} is not a finite number (JSON cannot hold it)")
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ReportError(f"{where}: keys must be strings, got {key!r}")
            out[key] = _to_plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ReportError(f"{where}: {type(value).__name__} cannot be written to JSON")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# A field spec is "kind", "kind|null" (required, may be null) or "kind?" (optional, may be null).
_KIND_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "number": (_is_number, "a number"),
    "rate": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1] (a fraction, not a percentage)"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "kappa": (lambda v: _is_number(v) and v <= 1, "a number at most 1 (a kappa, not a percentage)"),
}


def _check_fields(entry: Any, spec: dict[str, str], where: str) -> None:
    if not isinstance(entry, dict):
        raise ReportError(f"{where}: expected an object, got {type(entry).__name__}")
    for name, rule in spec.items():
        optional, nullable = rule.endswith("?"), rule.endswith("?") or rule.endswith("|null")
        kind = rule.rstrip("?").removesuffix("|null")
        if name not in entry:
            if optional:
                continue
            raise ReportError(f"{where}: missing field '{name}'")
        value = entry[name]
        if value is None and nullable:
            continue
        check, wanted = _KIND_CHECKS[kind]
        if not check(value):
            raise ReportError(f"{where}: field '{name}' must be {wanted}, got {value!r}")


def _check_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ReportError(f"{where}: expected a list, got {type(value).__name__}")
    return value


_WIN_RATE_FIELDS = {
    "model": "str", "reference": "str?", "win_rate": "rate|null", "ci_low": "rate?", "ci_high": "rate?",
    "standard_error": "number?", "lc_win_rate": "rate?", "lc_ci_low": "rate?", "lc_ci_high": "rate?",
    "n_scored": "int?", "failures": "int?", "failure_rate": "rate?",
}
_IFEVAL_FIELDS = {"model": "str", "prompt_strict": "rate", "prompt_loose": "rate", "instruction_strict": "rate",
                  "instruction_loose": "rate", "n_prompts": "int?"}
_STRATEGY_FIELDS = {"strategy": "str", "dataset": "str?", "accuracy_by_order": "dict", "mean_accuracy": "rate",
                    "positional_agreement": "rate?", "parse_failure_rate": "rate?", "n_items": "int?"}


def _validate(results: dict[str, Any]) -> None:
    unknown = sorted(set(results) - set(TOP_LEVEL))
    if unknown:
        raise ReportError(f"results: unknown section(s) {unknown}; known: {list(TOP_LEVEL)}")
    if "title" in results and not isinstance(results["title"], str):
        raise ReportError("results['title']: must be a string")
    if "meta" in results:
        if not isinstance(results["meta"], dict):
            raise ReportError("results['meta']: expected an object")
        for key, value in results["meta"].items():
            if isinstance(value, (dict, list)):
                raise ReportError(f"results['meta'][{key!r}]: must be a string, number, boolean or null")
    for i, entry in enumerate(_check_list(results.get("win_rates", []), "results['win_rates']")):
        _check_fields(entry, _WIN_RATE_FIELDS, f"results['win_rates'][{i}]")
    if "leaderboard" in results:
        _validate_leaderboard(results["leaderboard"])
    for i, entry in enumerate(_check_list(results.get("score_distributions", []), "results['score_distributions']")):
        where = f"results['score_distributions'][{i}]"
        _check_fields(entry, {"model": "str", "label": "str?", "scores": "list", "scale_min": "int",
                              "scale_max": "int"}, where)
        if entry["scale_max"] <= entry["scale_min"]:
            raise ReportError(f"{where}: scale_max must be above scale_min")
        for j, score in enumerate(entry["scores"]):
            if not _is_number(score) or not entry["scale_min"] - 0.5 <= score <= entry["scale_max"] + 0.5:
                raise ReportError(f"{where}['scores'][{j}]: {score!r} is not a number within "
                                  f"[{entry['scale_min']}, {entry['scale_max']}]")
    if "score_vs_length" in results:
        _validate_scatter(results["score_vs_length"])
    for i, entry in enumerate(_check_list(results.get("strategy_comparison", []), "results['strategy_comparison']")):
        where = f"results['strategy_comparison'][{i}]"
        _check_fields(entry, _STRATEGY_FIELDS, where)
        for order, accuracy in entry["accuracy_by_order"].items():
            _check_fields({order: accuracy}, {order: "rate"}, f"{where}['accuracy_by_order']")
    for i, entry in enumerate(_check_list(results.get("ifeval", []), "results['ifeval']")):
        _check_fields(entry, _IFEVAL_FIELDS, f"results['ifeval'][{i}]")
    for i, entry in enumerate(_check_list(results.get("refusals", []), "results['refusals']")):
        _validate_refusals(entry, f"results['refusals'][{i}]")
    for i, entry in enumerate(_check_list(results.get("before_after", []), "results['before_after']")):
        _check_fields(entry, {"metric": "str", "before": "number", "after": "number", "higher_is_better": "bool?"},
                      f"results['before_after'][{i}]")
    for i, curve in enumerate(_check_list(results.get("curves", []), "results['curves']")):
        _validate_curve(curve, f"results['curves'][{i}]")
    for i, table in enumerate(_check_list(results.get("tables", []), "results['tables']")):
        where = f"results['tables'][{i}]"
        _check_fields(table, {"title": "str", "columns": "list", "rows": "list"}, where)
        for j, row in enumerate(table["rows"]):
            if not isinstance(row, list) or len(row) != len(table["columns"]):
                raise ReportError(f"{where}['rows'][{j}]: expected a list of {len(table['columns'])} cells")
            for k, cell in enumerate(row):
                if isinstance(cell, (dict, list)):
                    raise ReportError(f"{where}['rows'][{j}][{k}]: cells must be strings, numbers, booleans or null")
    for i, entry in enumerate(_check_list(results.get("agreement", []), "results['agreement']")):
        _validate_agreement(entry, f"results['agreement'][{i}]")


def _validate_leaderboard(board: Any) -> None:
    where = "results['leaderboard']"
    _check_fields(board, {"anchor": "str", "anchor_rating": "number", "confidence": "rate?", "ratings": "list",
                          "win_matrix": "dict?"}, where)
    if not board["ratings"]:
        raise ReportError(f"{where}['ratings']: no models")
    for i, row in enumerate(board["ratings"]):
        _check_fields(row, {"model": "str", "rating": "number", "ci_low": "number?", "ci_high": "number?",
                            "n_battles": "int?"}, f"{where}['ratings'][{i}]")
    matrix = board.get("win_matrix")
    if matrix is not None:
        _check_fields(matrix, {"models": "list", "probabilities": "list"}, f"{where}['win_matrix']")
        size = len(matrix["models"])
        for i, row in enumerate(matrix["probabilities"]):
            if not isinstance(row, list) or len(row) != size:
                raise ReportError(f"{where}['win_matrix']['probabilities'][{i}]: expected a list of {size} rates")
            for j, p in enumerate(row):
                _check_fields({"p": p}, {"p": "rate"}, f"{where}['win_matrix']['probabilities'][{i}][{j}]")
        if len(matrix["probabilities"]) != size:
            raise ReportError(f"{where}['win_matrix']: {size} models but {len(matrix['probabilities'])} rows")


_AGREEMENT_FIELDS = {
    "task": "str", "level": "str", "n_items": "int", "n_labels": "int?", "annotators": "list", "cohen_kappa": "list",
    "shared_items": "list?", "fleiss_kappa": "kappa|null", "fleiss_items": "int?", "krippendorff_alpha": "kappa|null",
    "with_majority": "dict", "with_majority_items": "dict?",
}


def _validate_agreement(entry: Any, where: str) -> None:
    _check_fields(entry, _AGREEMENT_FIELDS, where)
    if entry["level"] not in AGREEMENT_LEVELS:
        raise ReportError(f"{where}: field 'level' must be one of {list(AGREEMENT_LEVELS)}, got {entry['level']!r}")
    names = entry["annotators"]
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ReportError(f"{where}['annotators'][{i}]: expected a string, got {name!r}")
    for field, kind, wanted in (("cohen_kappa", "kappa|null", "kappas or nulls"), ("shared_items", "int", "counts")):
        matrix = entry.get(field)
        if matrix is None:
            continue
        if len(matrix) != len(names):
            raise ReportError(f"{where}['{field}']: {len(names)} annotators but {len(matrix)} rows")
        for i, row in enumerate(matrix):
            if not isinstance(row, list) or len(row) != len(names):
                raise ReportError(f"{where}['{field}'][{i}]: expected a list of {len(names)} {wanted}")
            for j, value in enumerate(row):
                _check_fields({"v": value}, {"v": kind}, f"{where}['{field}'][{i}][{j}]")
    for field, kind in (("with_majority", "rate|null"), ("with_majority_items", "int")):
        for name, value in (entry.get(field) or {}).items():
            _check_fields({name: value}, {name: kind}, f"{where}['{field}']")


_REFUSAL_FIELDS = {
    "refusal_rate": "rate|null", "refusal_ci_low": "rate?", "refusal_ci_high": "rate?", "n_should_refuse": "int",
    "refused": "int", "failed_should_refuse": "int?", "over_refusal_rate": "rate|null", "over_refusal_ci_low": "rate?",
    "over_refusal_ci_high": "rate?", "n_should_answer": "int", "over_refused": "int", "failed_should_answer": "int?",
}


def _validate_refusals(entry: Any, where: str) -> None:
    _check_fields(entry, {"model": "str", "detector": "str?", **_REFUSAL_FIELDS, "per_category": "list?"}, where)
    rows = [(where, entry)] + [(f"{where}['per_category'][{i}]", row)
                               for i, row in enumerate(entry.get("per_category") or [])]
    for at, row in rows[1:]:
        _check_fields(row, {"category": "str", **_REFUSAL_FIELDS}, at)
    for at, row in rows:
        # counts that cannot add up mean the rates were computed from something else
        for count, failed, total in (("refused", "failed_should_refuse", "n_should_refuse"),
                                     ("over_refused", "failed_should_answer", "n_should_answer")):
            if row[count] + (row.get(failed) or 0) > row[total]:
                raise ReportError(f"{at}: '{count}' ({row[count]}) plus '{failed}' ({row.get(failed) or 0}) "
                                  f"exceed '{total}' ({row[total]})")


def _validate_scatter(section: Any) -> None:
    where = "results['score_vs_length']"
    _check_fields(section, {"length_unit": "str?", "series": "list"}, where)
    _validate_xy_series(section["series"], where, "model", "lengths", "scores")


def _validate_curve(curve: Any, where: str) -> None:
    _check_fields(curve, {"title": "str", "x_label": "str", "y_label": "str", "series": "list"}, where)
    if not curve["series"]:
        raise ReportError(f"{where}['series']: no series")
    _validate_xy_series(curve["series"], where, "name", "x", "y")


def _validate_xy_series(series_list: list, where: str, name_key: str, x_key: str, y_key: str) -> None:
    """Each series: a name and two lists of numbers of one length (non-finite ones _to_plain refused)."""
    for i, series in enumerate(series_list):
        at = f"{where}['series'][{i}]"
        _check_fields(series, {name_key: "str", x_key: "list", y_key: "list"}, at)
        if len(series[x_key]) != len(series[y_key]):
            raise ReportError(f"{at}: {len(series[x_key])} values in '{x_key}' but {len(series[y_key])} in '{y_key}'")
        for name in (x_key, y_key):
            for j, value in enumerate(series[name]):
                if not _is_number(value):
                    raise ReportError(f"{at}['{name}'][{j}]: expected a number, got {value!r}")


# ============================================================================ sections

def _section(anchor: str, title: str, content: str, note: str = "") -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{note_html}{content}</section>'


def _win_rates_section(entries: list[dict[str, Any]]) -> str:
    has_lc = any(e.get("lc_win_rate") is not None for e in entries)
    series = ["win rate", "length-controlled"] if has_lc else ["win rate"]
    rows = []
    for e in entries:
        label = e["model"] + (f" vs {e['reference']}" if e.get("reference") else "")
        marks = [Mark(0, e["win_rate"], e.get("ci_low"), e.get("ci_high"), pct(e["win_rate"]))]
        if has_lc:
            marks.append(Mark(1, e.get("lc_win_rate"), e.get("lc_ci_low"), e.get("lc_ci_high"), pct(e.get("lc_win_rate"))))
        rows.append(Row(label, marks))
    chart = horizontal_chart(rows, series, domain=(0.0, 1.0), css_class="winrates", reference=0.5,
                              tick_format=lambda t: f"{100 * t:.0f}%", label="win rates with confidence intervals")

    def interval(low: float | None, high: float | None) -> str:
        return "—" if low is None or high is None else f"{pct(low)} – {pct(high)}"

    table_rows = [[esc(e["model"]), esc(e.get("reference") or "—"), pct(e["win_rate"]),
                   interval(e.get("ci_low"), e.get("ci_high")), _lc_cell(e),
                   interval(e.get("lc_ci_low"), e.get("lc_ci_high")), num(e.get("n_scored")),
                   num(e.get("failures")), pct(e.get("failure_rate"))] for e in entries]
    table = html_table(["model", "reference", "win rate", "95% CI", "LC win rate", "LC 95% CI", "scored", "failures",
                    "failure rate"], table_rows, text_columns=2)
    notes = "".join(f'<p class="note">{esc(e["model"])}: length control '
                    f'{"unavailable:" if e.get("lc_win_rate") is None else "—"} {esc(e["lc_note"])}</p>'
                    for e in entries if e.get("lc_note"))
    return _section("win-rates", "Win rates", chart + table + notes,
                    "Wins count 1 and ties ½; unparseable judge answers are excluded and shown as failures. "
                    "Whiskers are 95% confidence intervals; the dashed line is 50%.")


def _lc_cell(entry: dict[str, Any]) -> str:
    # A missing LC rate with a reason was refused, not lost: say so rather than show a blank number.
    if entry.get("lc_win_rate") is None and entry.get("lc_note"):
        return "unavailable"
    return pct(entry.get("lc_win_rate"))


def _leaderboard_section(board: dict[str, Any]) -> str:
    ratings = board["ratings"]
    values = [r["rating"] for r in ratings] + [r[k] for r in ratings for k in ("ci_low", "ci_high") if r.get(k) is not None]
    pad = (max(values) - min(values)) * 0.08 or 50.0
    rows = [Row(r["model"], [Mark(0, r["rating"], r.get("ci_low"), r.get("ci_high"), f"{r['rating']:.0f}")])
            for r in ratings]
    chart = horizontal_chart(rows, ["rating"], domain=(min(values) - pad, max(values) + pad), css_class="leaderboard",
                              dots=True, reference=board["anchor_rating"], tick_format=lambda t: f"{t:.0f}",
                              label="Bradley-Terry ratings with confidence intervals")
    level = board.get("confidence")
    level_text = f"{100 * level:.0f}% CI" if level is not None else "CI"
    table = html_table(["rank", "model", "rating", level_text, "battles"], [
        [str(i + 1), esc(r["model"]), f"{r['rating']:.1f}",
         "anchor" if r["model"] == board["anchor"] else
         "—" if r.get("ci_low") is None or r.get("ci_high") is None else f"{r['ci_low']:.1f} – {r['ci_high']:.1f}",
         num(r.get("n_battles"))] for i, r in enumerate(ratings)], text_columns=2)
    content = chart + table
    matrix = board.get("win_matrix")
    if matrix:
        content += "<h3>Predicted win rate (row beats column)</h3>" + heat_matrix(
            matrix["models"], matrix["probabilities"], low=0.0, neutral=0.5, high=1.0, fmt=pct)
    note = (f"Bradley-Terry maximum likelihood, ties as half wins, on an Elo scale with "
            f"{esc(board['anchor'])} fixed at {board['anchor_rating']:g} (dashed line).")
    return _section("leaderboard", "Leaderboard", content, note)


def _distributions_section(entries: list[dict[str, Any]]) -> str:
    histograms = []
    binned = []
    for e in entries:
        bins = list(range(e["scale_min"], e["scale_max"] + 1))
        counts = [0] * len(bins)
        for score in e["scores"]:
            counts[int(math.floor(score + 0.5)) - e["scale_min"]] += 1
        binned.append((e, bins, counts))
    y_max = max([max(c) for _, _, c in binned if c] or [1])  # shared height so models compare by eye
    for i, (e, bins, counts) in enumerate(binned):
        mean = sum(e["scores"]) / len(e["scores"]) if e["scores"] else None
        title = e["model"] + (f" · {e['label']}" if e.get("label") else "") + f" (n={len(e['scores'])}, mean {num(mean, 3)})"
        histograms.append(histogram(title, bins, counts, y_max, PALETTE[i % len(PALETTE)]))
    return _section("score-distributions", "Score distributions", f'<div class="charts">{"".join(histograms)}</div>')


def _scatter_section(section: dict[str, Any]) -> str:
    unit = section.get("length_unit") or "tokens"
    return _section("score-vs-length", "Score against response length", scatter(section["series"], f"response length ({unit})"))


def _strategy_section(rows: list[dict[str, Any]]) -> str:
    orders = list(dict.fromkeys(order for r in rows for order in r["accuracy_by_order"]))
    with_dataset = any(r.get("dataset") for r in rows)
    columns = (["dataset"] if with_dataset else []) + ["strategy"] + [f"accuracy ({o})" for o in orders] + \
        ["mean accuracy", "positional agreement", "parse failures", "items"]
    body = []
    for r in rows:
        cells = ([esc(r.get("dataset") or "—")] if with_dataset else []) + [esc(r["strategy"])]
        cells += [pct(r["accuracy_by_order"].get(o)) for o in orders]
        cells += [pct(r["mean_accuracy"]), pct(r.get("positional_agreement")), pct(r.get("parse_failure_rate")),
                  num(r.get("n_items"))]
        body.append(cells)
    return _section("strategy-comparison", "Judge strategy comparison",
                    _strategy_chart(rows) + html_table(columns, body, text_columns=2 if with_dataset else 1),
                    "Accuracy against human labels in each presentation order; positional agreement is the share "
                    "of items judged the same way in both orders. The chart shows the rows over all datasets when "
                    "there are such rows; the dashed line is chance (50%).")


_STRATEGY_SERIES = (("mean accuracy", "mean_accuracy"), ("positional agreement", "positional_agreement"),
                    ("parse failures", "parse_failure_rate"))


def _strategy_chart(rows: list[dict[str, Any]]) -> str:
    overall = [r for r in rows if r.get("dataset") == "all"]
    charted = overall or rows
    chart_rows = []
    for r in charted:
        label = r["strategy"] if overall or not r.get("dataset") else f"{r['strategy']} ({r['dataset']})"
        chart_rows.append(Row(label, [Mark(i, r.get(key), text=pct(r.get(key)))
                                      for i, (_, key) in enumerate(_STRATEGY_SERIES)]))
    return horizontal_chart(chart_rows, [name for name, _ in _STRATEGY_SERIES], domain=(0.0, 1.0),
                            css_class="strategies", reference=0.5, tick_format=lambda t: f"{100 * t:.0f}%",
                            label="judge accuracy, positional agreement and parse failures per strategy")


_IFEVAL_METRICS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


def _ifeval_section(entries: list[dict[str, Any]]) -> str:
    series = [m.replace("_", " ") for m in _IFEVAL_METRICS]
    rows = [Row(e["model"], [Mark(k, e[m], text=pct(e[m])) for k, m in enumerate(_IFEVAL_METRICS)]) for e in entries]
    chart = horizontal_chart(rows, series, domain=(0.0, 1.0), css_class="ifeval", label="IFEval accuracies",
                              tick_format=lambda t: f"{100 * t:.0f}%")
    table = html_table(["model", "prompt strict", "prompt loose", "instruction strict", "instruction loose", "prompts"],
                   [[esc(e["model"])] + [pct(e[m]) for m in _IFEVAL_METRICS] + [num(e.get("n_prompts"))] for e in entries])
    return _section("ifeval", "IFEval", chart + table)


def _refusals_section(entries: list[dict[str, Any]]) -> str:
    def label(e: dict[str, Any]) -> str:
        return e["model"] + (f" · {e['detector']}" if e.get("detector") else "")

    rows = [Row(label(e), [Mark(0, e["refusal_rate"], e.get("refusal_ci_low"), e.get("refusal_ci_high"),
                                pct(e["refusal_rate"])),
                           Mark(1, e["over_refusal_rate"], e.get("over_refusal_ci_low"), e.get("over_refusal_ci_high"),
                                pct(e["over_refusal_rate"]))]) for e in entries]
    chart = horizontal_chart(rows, ["refusal rate (↑ better)", "over-refusal rate (↓ better)"], domain=(0.0, 1.0),
                             css_class="refusals", tick_format=lambda t: f"{100 * t:.0f}%",
                             label="refusal and over-refusal rates with 95% intervals")

    def cell(rate: float | None, refused: int, n: int, failed: int | None) -> str:
        if not n:
            return "—"
        return f"{pct(rate)} ({refused}/{n - (failed or 0)})" + (f", {failed} failed" if failed else "")

    categories = list(dict.fromkeys(r["category"] for e in entries for r in e.get("per_category") or []))
    by_category = [{r["category"]: r for r in e.get("per_category") or []} for e in entries]
    body = []
    for name in ["all", *categories]:
        cells = [esc(name)]
        for e, rows_of in zip(entries, by_category):
            r = e if name == "all" else rows_of.get(name)
            cells += ["—", "—"] if r is None else [
                cell(r["refusal_rate"], r["refused"], r["n_should_refuse"], r.get("failed_should_refuse")),
                cell(r["over_refusal_rate"], r["over_refused"], r["n_should_answer"], r.get("failed_should_answer"))]
        body.append(cells)
    columns = ["category"] + [f"{label(e)}: {side}" for e in entries for side in ("should refuse", "should answer")]
    note = ("Share of responses detected as refusals, on prompts that should be refused (higher is better) and on "
            "prompts that only look risky and should be answered (lower is better); counts are refused / scored. "
            "Whiskers are 95% Wilson intervals. Failed detections (an unreadable judge reply, a failed generation) "
            "are counted apart and left out of the rates.")
    return _section("refusals", "Refusals", chart + html_table(columns, body), note)


def _before_after_section(entries: list[dict[str, Any]]) -> str:
    # Metrics live on different scales, so each row's bars are drawn relative to its own largest value.
    negative = any(min(e["before"], e["after"]) < 0 for e in entries)
    rows = []
    for e in entries:
        scale = max(abs(e["before"]), abs(e["after"])) or 1.0
        rows.append(Row(e["metric"], [Mark(0, e["before"] / scale, text=num(e["before"])),
                                       Mark(1, e["after"] / scale, text=num(e["after"]))]))
    chart = horizontal_chart(rows, ["before training", "after training"], domain=(-1.0 if negative else 0.0, 1.0),
                              css_class="before-after", label="metrics before and after training", show_axis=False)
    body = []
    for e in entries:
        change = e["after"] - e["before"]
        # A missing direction means higher is better; null means neither is (a length, say).
        direction = e.get("higher_is_better", True)
        better = change > 0 if direction else change < 0
        verdict = "" if change == 0 or direction is None else ("better" if better else "worse")
        body.append([esc(e["metric"]), num(e["before"]), num(e["after"]),
                     f'<td class="{verdict}">{"+" if change > 0 else ""}{num(change)}</td>'])
    return _section("before-after", "Before and after training", chart + html_table(["metric", "before", "after", "change"], body),
                    "Bars are scaled per metric to its larger value; the table has the numbers.")


def _curves_section(curves: list[dict[str, Any]]) -> str:
    parts = [f"<h3>{esc(c['title'])}</h3>" + line_chart(c["series"], c["x_label"], c["y_label"], c["title"])
             for c in curves]
    return _section("curves", "Curves", "".join(parts))


def _tables_section(tables: list[dict[str, Any]]) -> str:
    parts = []
    for t in tables:
        rows = [[esc(num(cell, 6)) for cell in row] for row in t["rows"]]
        parts.append(f"<h3>{esc(t['title'])}</h3>" + html_table(t["columns"], rows))
    return _section("tables", "Tables", "".join(parts))


def _agreement_section(entries: list[dict[str, Any]]) -> str:
    parts = []
    for e in entries:
        fleiss = num(e["fleiss_kappa"], 3)
        if e.get("fleiss_items") is not None:
            fleiss += f" ({num(e['fleiss_items'])} items)"
        summary = html_table(["level", "items", "annotators", "labels", "Fleiss' κ", "Krippendorff's α"], [[
            esc(e["level"]), num(e["n_items"]), num(len(e["annotators"])), num(e.get("n_labels")), esc(fleiss),
            num(e["krippendorff_alpha"], 3)]])
        # kappa is 0 at chance and 1 at full agreement; -1 is the usual floor, so the colours span [-1, 1]
        matrix = heat_matrix(e["annotators"], e["cohen_kappa"], low=-1.0, neutral=0.0, high=1.0,
                             fmt=lambda k: f"{k:.2f}")
        parts.append(f"<h3>{esc(e['task'])}</h3>{summary}<h4>Cohen's κ between annotators</h4>{matrix}"
                     + _majority_chart(e))
    return _section("agreement", "Annotator agreement", "".join(parts),
                    "Cohen's κ per pair over the items both labelled (weighted linearly for ordinal labels, "
                    "quadratically for interval labels; — where undefined or fewer than 2 shared items); Fleiss' κ "
                    "treats labels as categories and counts only the items with the most common number of labels; "
                    "Krippendorff's α uses every item with two labels or more. 0 is chance agreement, 1 perfect.")


def _majority_chart(entry: dict[str, Any]) -> str:
    """Each annotator's share of items where they agree with the other annotators' majority label."""
    shares = entry["with_majority"]
    if not shares:
        return ""
    items = entry.get("with_majority_items") or {}
    rows = []
    for name, share in shares.items():
        text = pct(share) + (f" of {num(items[name])}" if items.get(name) is not None else "")
        rows.append(Row(name, [Mark(0, share, text=text)]))
    return ("<h4>Agreement with the others' majority</h4>"
            + horizontal_chart(rows, ["agreement with the majority"], domain=(0.0, 1.0), css_class="agreement",
                               tick_format=lambda t: f"{100 * t:.0f}%",
                               label=f"agreement with the majority per annotator, {entry['task']}"))


_RENDERERS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "win_rates": ("Win rates", _win_rates_section),
    "leaderboard": ("Leaderboard", _leaderboard_section),
    "score_distributions": ("Score distributions", _distributions_section),
    "score_vs_length": ("Score vs length", _scatter_section),
    "strategy_comparison": ("Judge strategies", _strategy_section),
    "ifeval": ("IFEval", _ifeval_section),
    "refusals": ("Refusals", _refusals_section),
    "before_after": ("Before/after", _before_after_section),
    "curves": ("Curves", _curves_section),
    "tables": ("Tables", _tables_section),
    "agreement": ("Agreement", _agreement_section),
}


def render_html(results: dict[str, Any]) -> str:
    """The report page for already-checked `results` (see `write_report`)."""
    title = results.get("title") or "alignkit evaluation report"
    css = resources.files("alignkit.evaluation").joinpath("report_assets/report.css").read_text(encoding="utf-8")
    present = [name for name in SECTIONS if results.get(name)]
    nav = "".join(f'<a href="#{n.replace("_", "-")}">{esc(_RENDERERS[n][0])}</a>' for n in present)
    meta = results.get("meta") or {}
    meta_html = ('<dl class="meta">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(num(v))}</dd>" for k, v in meta.items())
                 + "</dl>") if meta else ""
    sections = "".join(_RENDERERS[name][1](results[name]) for name in present)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{css}</style></head>\n<body>"
        f"<h1>{esc(title)}</h1>{meta_html}<nav>{nav}</nav>{sections}</body></html>\n"
    )


def write_report(results: dict[str, Any], out_dir: str | Path, name: str = "report") -> tuple[Path, Path]:
    """Check `results` against the schema above, then write `<name>.html` and `<name>.json` into out_dir
    (each atomically).

    The JSON file holds {"format_version": 1, **results} with every number exactly as given.
    Raises ReportError naming the offending path before anything is written.
    """
    if not isinstance(results, dict):
        raise ReportError(f"results must be a dict, got {type(results).__name__}")
    plain = _to_plain(results, "results")
    _validate(plain)
    page = render_html(plain)
    html_path, json_path = Path(out_dir) / f"{name}.html", Path(out_dir) / f"{name}.json"
    write_json_atomic(json_path, {"format_version": FORMAT_VERSION, **plain})
    write_text_atomic(html_path, page)
    return html_path, json_path
