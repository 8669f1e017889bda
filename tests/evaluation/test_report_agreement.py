import json
import re
from html.parser import HTMLParser

import pytest

from alignkit.annotation.agreement import agreement
from alignkit.evaluation.report import ReportError, write_report
from alignkit.evaluation.run_files import merge_sections, read_sections

INJECTED = '<script>window.__pwned = 1</script>'


def entry(**changes) -> dict:
    base = {
        "task": "helpfulness", "level": "nominal", "n_items": 40, "n_labels": 115, "annotators": ["ann", "bob", "cy"],
        "cohen_kappa": [[1.0, 0.62, -0.25], [0.62, 1.0, None], [-0.25, None, 1.0]],
        "shared_items": [[40, 38, 1], [38, 39, 0], [1, 0, 36]],
        "fleiss_kappa": 0.41, "fleiss_items": 35, "krippendorff_alpha": 0.405,
        "with_majority": {"ann": 0.875, "bob": 0.8, "cy": None}, "with_majority_items": {"ann": 38, "bob": 37, "cy": 0},
    }
    return {**base, **changes}


class Marks(HTMLParser):
    """Collects the tags, the bars of each chart (by its class) and the background colour of each table cell."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.chart: str | None = None
        self.bars: dict[str, int] = {}
        self.cells: list[tuple[str, str]] = []  # (background style, text)
        self._cell_style: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "svg" and "chart" in classes:
            self.chart = [c for c in classes if c != "chart"][0]
            self.bars.setdefault(self.chart, 0)
        elif tag == "rect" and "bar" in classes and self.chart:
            self.bars[self.chart] += 1
        elif tag == "td":
            self._cell_style = attrs.get("style") or ""

    def handle_data(self, data):
        if self._cell_style is not None:
            self.cells.append((self._cell_style, data))
            self._cell_style = None

    def handle_endtag(self, tag):
        if tag == "svg":
            self.chart = None


def parse(text: str) -> Marks:
    marks = Marks()
    marks.feed(text)
    return marks


def test_agreement_section_renders_summary_matrix_and_majority_bars(tmp_path):
    html_path, json_path = write_report({"agreement": [entry(), entry(task="harmlessness", level="ordinal")]}, tmp_path)
    text = html_path.read_text(encoding="utf-8")
    assert 'id="agreement"' in text and 'href="#agreement"' in text
    assert text.count("<h3>helpfulness</h3>") == 1 and "<h3>harmlessness</h3>" in text
    marks = parse(text)
    assert marks.bars["agreement"] == 2 * 2  # cy has no share: no bar, in both entries
    coloured = {data: style for style, data in marks.cells if style}
    assert coloured["1.00"] == "background: rgb(99, 190, 123)"  # full green at kappa 1
    # -0.25 is a quarter of the way from white to the red end: 255 - 0.25 * (255 - 248) etc.
    assert coloured["-0.25"] == f"background: rgb({int(255 - 0.25 * 7)}, {int(255 - 0.25 * 150)}, {int(255 - 0.25 * 148)})"
    assert coloured["0.62"] == f"background: rgb({int(255 - 0.62 * 156)}, {int(255 - 0.62 * 65)}, {int(255 - 0.62 * 132)})"
    for cell in ("0.41 (35 items)", "0.405", "87.5% of 38", "80.0% of 37", "n/a"):
        assert cell in text
    assert json.loads(json_path.read_text())["agreement"][1]["level"] == "ordinal"


def test_win_matrix_is_still_drawn_by_the_shared_helper(tmp_path):
    board = {"anchor": "a", "anchor_rating": 1000, "ratings": [{"model": "a", "rating": 1000}, {"model": "b", "rating": 900}],
             "win_matrix": {"models": ["a", "b"], "probabilities": [[0.5, 0.75], [0.25, 0.5]]}}
    cells = {data: style for style, data in parse(write_report({"leaderboard": board}, tmp_path)[0].read_text()).cells
             if style}
    assert cells["50.0%"] == "background: rgb(255, 255, 255)"
    assert cells["75.0%"] == f"background: rgb({int(255 - 0.5 * 156)}, {int(255 - 0.5 * 65)}, {int(255 - 0.5 * 132)})"
    assert cells["25.0%"] == f"background: rgb({int(255 - 0.5 * 7)}, {int(255 - 0.5 * 150)}, {int(255 - 0.5 * 148)})"


def test_annotator_and_task_names_are_escaped(tmp_path):
    bad = entry(task=INJECTED, annotators=["ann", INJECTED, "cy"],
                with_majority={"ann": 0.5, INJECTED: 0.25, "cy": None}, with_majority_items=None)
    text = write_report({"agreement": [bad]}, tmp_path)[0].read_text(encoding="utf-8")
    assert "script" not in parse(text).tags
    assert "<script" not in text
    assert text.count("&lt;script&gt;") >= 4  # heading, matrix row, matrix column, chart label


def test_agreement_to_dict_with_a_task_is_accepted(tmp_path):
    labels = [(i, name, label) for i in range(12) for name, label in
              (("ann", "1" if i % 3 else "2"), ("bob", "1" if i % 4 else "2"), ("<cy>", "tie" if i == 5 else "1"))]
    result = agreement(labels)
    html_path, json_path = write_report({"agreement": [{"task": "pairwise", **result.to_dict()}]}, tmp_path)
    written = json.loads(json_path.read_text())["agreement"][0]
    assert written == {"task": "pairwise", **result.to_dict()}
    assert "&lt;cy&gt;" in html_path.read_text()


def test_agreement_without_figures_is_accepted(tmp_path):
    empty = {"task": "nobody yet", **agreement([]).to_dict()}
    alone = {"task": "one", **agreement([("i", "a", "x")]).to_dict()}
    text = write_report({"agreement": [empty, alone]}, tmp_path)[0].read_text()
    assert "<h3>nobody yet</h3>" in text and "<h3>one</h3>" in text


def test_report_json_with_agreement_is_read_and_merged(tmp_path):
    for name, task in (("a", "helpfulness"), ("b", "harmlessness")):
        write_report({"agreement": [entry(task=task)]}, tmp_path / name)
    meta, sections = read_sections(tmp_path / "a" / "report.json")
    assert sections == {"agreement": [entry()]}
    _, merged = merge_sections([tmp_path / "a" / "report.json", tmp_path / "b" / "report.json"])
    assert [e["task"] for e in merged["agreement"]] == ["helpfulness", "harmlessness"]
    write_report(merged, tmp_path / "merged")


WHERE = re.escape("results['agreement'][0]")


@pytest.mark.parametrize("changes, message", [
    ({"task": None}, WHERE + ": field 'task' must be a string"),
    ({"level": "ratio"}, WHERE + ": field 'level' must be one of"),
    ({"fleiss_kappa": 41.0}, WHERE + ": field 'fleiss_kappa' must be a number at most 1"),
    ({"krippendorff_alpha": "0.4"}, WHERE + ": field 'krippendorff_alpha' must be a number at most 1"),
    ({"n_items": -1}, WHERE + ": field 'n_items' must be a non-negative integer"),
    ({"annotators": ["ann", 2, "cy"]}, WHERE + re.escape("['annotators'][1]: expected a string")),
    ({"cohen_kappa": [[1.0, 0.5, 0.2], [0.5, 1.0, 0.1]]}, WHERE + re.escape("['cohen_kappa']: 3 annotators but 2 rows")),
    ({"cohen_kappa": [[1.0, 0.5, 0.2], [0.5, 1.0], [0.2, 0.1, 1.0]]},
     WHERE + re.escape("['cohen_kappa'][1]: expected a list of 3")),
    ({"cohen_kappa": [[1.0, 62, 0.2], [62, 1.0, 0.1], [0.2, 0.1, 1.0]]},
     WHERE + re.escape("['cohen_kappa'][0][1]: field 'v' must be a number at most 1")),
    ({"cohen_kappa": [[1.0, float("nan"), 0.2], [0.5, 1.0, 0.1], [0.2, 0.1, 1.0]]},
     WHERE + re.escape("['cohen_kappa'][0][1]: nan is not a finite number")),
    ({"shared_items": [[1, 2, 3], [2, 1, 0], [3, 0, 1.5]]}, WHERE + re.escape("['shared_items'][2][2]")),
    ({"with_majority": {"ann": 1.5}}, WHERE + re.escape("['with_majority']: field 'ann' must be a number in [0, 1]")),
    ({"with_majority": ["ann"]}, WHERE + ": field 'with_majority' must be an object"),
    ({"with_majority_items": {"ann": 0.5}}, WHERE + re.escape("['with_majority_items']: field 'ann' must be a non-neg")),
])
def test_bad_agreement_entries_name_the_path(tmp_path, changes, message):
    out_dir = tmp_path / "out"
    with pytest.raises(ReportError, match=message):
        write_report({"agreement": [entry(**changes)]}, out_dir)
    assert not out_dir.exists()


def test_missing_field_and_wrong_section_type(tmp_path):
    bad = entry()
    del bad["cohen_kappa"]
    with pytest.raises(ReportError, match=WHERE + ": missing field 'cohen_kappa'"):
        write_report({"agreement": [bad]}, tmp_path)
    with pytest.raises(ReportError, match=re.escape("results['agreement']: expected a list")):
        write_report({"agreement": entry()}, tmp_path)
