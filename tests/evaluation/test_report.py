import json
import os
from html.parser import HTMLParser

import numpy as np
import pytest

from alignkit.evaluation.leaderboard import bradley_terry
from alignkit.evaluation.report import ReportError, write_report
from alignkit.evaluation.winrate import win_rate_entry

INJECTED = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def make_results(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    verdicts = [{"id": f"q{i}", "winner": ["model", "reference", "tie", None][i % 4],
                 "len_model": int(rng.integers(20, 400)), "len_reference": int(rng.integers(20, 400))} for i in range(40)]
    names = [INJECTED, "sft-7b", "dpo-7b"]
    battles = [{"model_a": names[i % 3], "model_b": names[(i + 1) % 3], "winner": ["a", "b", "tie"][i % 5 % 3]}
               for i in range(60)]
    return {
        "title": "Run " + INJECTED,
        "meta": {"base model": INJECTED, "seed": 17, "temperature": float(rng.random()), "debug": False, "note": None},
        "win_rates": [
            win_rate_entry(INJECTED, verdicts, reference="gpt-4"),
            {"model": "sft-7b", "win_rate": float(rng.random()), "ci_low": None, "ci_high": None},  # no LC bar
            {"model": "all-failed", "win_rate": None, "failures": 40, "failure_rate": 1.0},  # no bars at all
        ],
        "leaderboard": bradley_terry(battles, n_bootstrap=20, seed=1),
        "score_distributions": [
            {"model": INJECTED, "label": "turn 1", "scores": [1, 1, 2, 7, 9.5, 10], "scale_min": 1, "scale_max": 10},
            {"model": "sft-7b", "scores": [float(x) for x in rng.integers(1, 6, size=12)], "scale_min": 1, "scale_max": 5},
        ],
        "score_vs_length": {"length_unit": "characters", "series": [
            {"model": INJECTED, "lengths": rng.integers(1, 900, size=7).tolist(), "scores": rng.random(7).tolist()},
            {"model": "sft-7b", "lengths": rng.integers(1, 900, size=5).tolist(), "scores": rng.random(5).tolist()},
        ]},
        "strategy_comparison": [
            {"strategy": "pairwise", "dataset": "llmbar-natural", "accuracy_by_order": {"ab": 0.9, "ba": 0.85},
             "mean_accuracy": 0.875, "positional_agreement": 0.8, "parse_failure_rate": 0.01, "n_items": 100},
            {"strategy": INJECTED, "dataset": "llmbar-neighbor", "accuracy_by_order": {"ab": float(rng.random())},
             "mean_accuracy": float(rng.random())},
        ],
        "ifeval": [
            {"model": INJECTED, "prompt_strict": 0.31, "prompt_loose": 0.35, "instruction_strict": 0.42,
             "instruction_loose": 0.47, "n_prompts": 541},
            {"model": "dpo-7b", "prompt_strict": float(rng.random()), "prompt_loose": 0.5, "instruction_strict": 0.5,
             "instruction_loose": 0.6},
        ],
        "before_after": [
            {"metric": "MT-Bench", "before": 4.1, "after": 5.6},
            {"metric": "eval loss", "before": 2.3, "after": 1.9, "higher_is_better": False},
            {"metric": INJECTED, "before": -0.5, "after": float(rng.normal())},
        ],
        "curves": [{"title": "reward per step " + INJECTED, "x_label": "step", "y_label": INJECTED, "series": [
            {"name": INJECTED, "x": list(range(1, 9)), "y": rng.random(8).tolist()},
            {"name": "held-out", "x": [0, 8], "y": [0.1, 0.9]},
        ]}],
        "tables": [{"title": INJECTED, "columns": ["name", "value", INJECTED],
                    "rows": [["a", 1, float(rng.random())], [INJECTED, None, True]]}],
    }


def expected_marks(results: dict) -> dict[str, int]:
    """How many bars / points each chart must draw, worked out from the input alone."""
    win_rates = results["win_rates"]
    return {
        "winrates": sum(e.get("win_rate") is not None for e in win_rates)
        + sum(e.get("lc_win_rate") is not None for e in win_rates),
        "leaderboard": len(results["leaderboard"].models),
        "histogram": sum(e["scale_max"] - e["scale_min"] + 1 for e in results["score_distributions"]),
        "scatter": sum(len(s["lengths"]) for s in results["score_vs_length"]["series"]),
        "strategies": sum(r.get(key) is not None for r in results["strategy_comparison"]
                          for key in ("mean_accuracy", "positional_agreement", "parse_failure_rate")),
        "ifeval": 4 * len(results["ifeval"]),
        "before-after": 2 * len(results["before_after"]),
        "curve": sum(len(s["x"]) for c in results["curves"] for s in c["series"]),
    }


class ChartCounter(HTMLParser):
    """Counts rect.bar / circle.point elements inside each chart svg, by the chart's class."""

    def __init__(self) -> None:
        super().__init__()
        self.chart: str | None = None
        self.marks: dict[str, int] = {}
        self.charts: dict[str, int] = {}
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        classes = (dict(attrs).get("class") or "").split()
        if tag == "svg" and "chart" in classes:
            self.chart = [c for c in classes if c != "chart"][0]
            self.charts[self.chart] = self.charts.get(self.chart, 0) + 1
            self.marks.setdefault(self.chart, 0)
        elif self.chart and (("bar" in classes and tag == "rect") or ("point" in classes and tag == "circle")):
            self.marks[self.chart] += 1

    def handle_endtag(self, tag):
        if tag == "svg":
            self.chart = None


def test_charts_draw_one_mark_per_value(tmp_path):
    results = make_results()
    html_path, _ = write_report(results, tmp_path)
    counter = ChartCounter()
    counter.feed(html_path.read_text(encoding="utf-8"))
    assert counter.marks == expected_marks(results)
    assert counter.charts["histogram"] == len(results["score_distributions"])


def test_histogram_bins_round_to_the_nearest_grade(tmp_path):
    results = {"score_distributions": [{"model": "m", "scores": [1, 1, 2, 7, 9.5, 10], "scale_min": 1, "scale_max": 10}]}
    text = write_report(results, tmp_path)[0].read_text()
    for grade, count in {1: 2, 2: 1, 3: 0, 7: 1, 9: 0, 10: 2}.items():
        assert f"<title>grade {grade}: {count}</title>" in text


def test_json_round_trips_every_number(tmp_path):
    results = make_results(seed=5)
    _, json_path = write_report(results, tmp_path)
    written = json.loads(json_path.read_text(encoding="utf-8"))
    assert written.pop("format_version") == 1
    expected = dict(results, leaderboard=results["leaderboard"].to_dict())

    def numbers(value):
        if isinstance(value, dict):
            return [n for k in sorted(value) for n in numbers(value[k])]
        if isinstance(value, list):
            return [n for item in value for n in numbers(item)]
        return [(type(value).__name__, value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []

    assert numbers(written) == numbers(expected)  # same values, same int/float types, same order
    assert len(numbers(expected)) > 100  # the walk really sees the numbers
    assert written == expected


def test_numpy_values_are_written_as_plain_numbers(tmp_path):
    results = {"ifeval": [{"model": "m", "prompt_strict": np.float64(0.25), "prompt_loose": np.float32(0.5),
                           "instruction_strict": 0.75, "instruction_loose": 1.0, "n_prompts": np.int64(8)}]}
    written = json.loads(write_report(results, tmp_path)[1].read_text())
    assert written["ifeval"][0]["prompt_strict"] == 0.25 and written["ifeval"][0]["n_prompts"] == 8


def test_user_text_is_escaped(tmp_path):
    html_path, _ = write_report(make_results(), tmp_path)
    text = html_path.read_text(encoding="utf-8")
    counter = ChartCounter()
    counter.feed(text)
    assert "script" not in counter.tags and "img" not in counter.tags
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in text
    assert 'onerror="' not in text


def test_only_present_sections_are_rendered(tmp_path):
    results = {"ifeval": make_results()["ifeval"]}
    text = write_report(results, tmp_path)[0].read_text()
    assert 'id="ifeval"' in text
    for absent in ("win-rates", "leaderboard", "score-distributions", "score-vs-length", "strategy-comparison",
                   "before-after", "tables"):
        assert f'id="{absent}"' not in text


def test_strategy_chart_shows_the_overall_rows_when_there_are_any(tmp_path):
    row = {"accuracy_by_order": {"ab": 0.5}, "mean_accuracy": 0.5, "positional_agreement": 0.25,
           "parse_failure_rate": 0.125}
    rows = [dict(row, strategy=s, dataset=d) for s in ("plain", "cot") for d in ("all", "natural", "neighbor")]
    counter = ChartCounter()
    counter.feed(write_report({"strategy_comparison": rows}, tmp_path)[0].read_text())
    assert counter.marks["strategies"] == 2 * 3  # two strategies over all datasets, three marks each


def test_strategy_table_shows_every_order_column(tmp_path):
    text = write_report({"strategy_comparison": make_results()["strategy_comparison"]}, tmp_path)[0].read_text()
    for cell in ("accuracy (ab)", "accuracy (ba)", "90.0%", "85.0%", "87.5%", "80.0%", "1.0%", "llmbar-natural"):
        assert cell in text


@pytest.mark.parametrize("results, message", [
    ({"winrates": []}, "unknown section\\(s\\) \\['winrates'\\]"),
    ({"ifeval": [{"model": "m", "prompt_strict": 73.4, "prompt_loose": 0.5, "instruction_strict": 0.5,
                  "instruction_loose": 0.5}]}, "results\\['ifeval'\\]\\[0\\]: field 'prompt_strict' must be a number in"),
    ({"win_rates": [{"model": "m", "win_rate": float("nan")}]}, "results\\['win_rates'\\]\\[0\\]\\['win_rate'\\]: nan"),
    ({"win_rates": [{"model": "m"}]}, "results\\['win_rates'\\]\\[0\\]: missing field 'win_rate'"),
    ({"tables": [{"title": "t", "columns": ["a", "b"], "rows": [[1]]}]}, "results\\['tables'\\]\\[0\\]\\['rows'\\]\\[0\\]"),
    ({"score_distributions": [{"model": "m", "scores": [11], "scale_min": 1, "scale_max": 10}]},
     "results\\['score_distributions'\\]\\[0\\]\\['scores'\\]\\[0\\]: 11"),
    ({"score_vs_length": {"series": [{"model": "m", "lengths": [1, 2], "scores": [3]}]}}, "2 values in 'lengths' but 1 in 'scores'"),
    ({"curves": [{"title": "t", "x_label": "x", "y_label": "y", "series": [{"name": "s", "x": [1, 2], "y": [3]}]}]},
     "results\\['curves'\\]\\[0\\]\\['series'\\]\\[0\\]: 2 values in 'x' but 1 in 'y'"),
    ({"curves": [{"title": "t", "x_label": "x", "y_label": "y", "series": [{"name": "s", "x": [1], "y": [float("nan")]}]}]},
     "\\['series'\\]\\[0\\]\\['y'\\]\\[0\\]: nan is not a finite number"),
    ({"curves": [{"title": "t", "x_label": "x", "y_label": "y", "series": []}]}, "no series"),
    ({"leaderboard": {"anchor": "a", "anchor_rating": 1000, "ratings": [{"model": "a"}]}},
     "results\\['leaderboard'\\]\\['ratings'\\]\\[0\\]: missing field 'rating'"),
    ({"meta": {"x": object()}}, "results\\['meta'\\]\\['x'\\]: object cannot be written"),
])
def test_bad_results_are_rejected_before_writing(tmp_path, results, message):
    out_dir = tmp_path / "out"
    with pytest.raises(ReportError, match=message):
        write_report(results, out_dir)
    assert not out_dir.exists()


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]


def test_report_in_headless_chromium(tmp_path):
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("/usr/bin/chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright==1.65.2)")
    results = make_results()
    html_path, _ = write_report(results, tmp_path)
    url = html_path.resolve().as_uri()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type in ("error", "warning") else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url, wait_until="load")

            assert errors == []
            assert requests and all(r.startswith("file://") for r in requests), requests
            for chart, count in expected_marks(results).items():
                marks = page.locator(f"svg.chart.{chart} rect.bar, svg.chart.{chart} circle.point")
                assert marks.count() == count, chart
            # every drawn bar has a real size on screen (not collapsed by bad coordinates)
            widths = page.eval_on_selector_all("svg.winrates rect.bar", "els => els.map(e => e.getBBox().width)")
            assert all(w > 0 for w in widths)

            assert page.evaluate("typeof window.__pwned") == "undefined"
            assert page.locator("img").count() == 0 and page.locator("script").count() == 0
            assert page.locator("h1").inner_text() == "Run " + INJECTED
            assert page.locator("#ifeval td").first.inner_text() == INJECTED
        finally:
            browser.close()


def test_numpy_arrays_become_lists(tmp_path):
    series = {"model": "m", "lengths": np.array([3, 9]), "scores": np.array([0.5, 0.25])}
    written = json.loads(write_report({"score_vs_length": {"series": [series]}}, tmp_path)[1].read_text())
    assert written["score_vs_length"]["series"][0] == {"model": "m", "lengths": [3, 9], "scores": [0.5, 0.25]}


def test_length_control_note_is_shown(tmp_path):
    verdicts = [{"id": str(i), "winner": w, "len_model": 300, "len_reference": 200}
                for i, w in enumerate(["model", "tie", "reference"])]
    text = write_report({"win_rates": [win_rate_entry("m", verdicts)]}, tmp_path)[0].read_text()
    assert "every length difference is +100" in text
