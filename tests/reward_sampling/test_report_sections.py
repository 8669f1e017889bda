"""`alignkit report` draws the sampling methods' report.json files: best-of-n's curve against k and KL, the
rounds' held-out figures, RSO's before/after; anything else is still refused."""
from __future__ import annotations

import json

import pytest

from alignkit.data.errors import DataError
from alignkit.evaluation.commands import build_report
from alignkit.evaluation.run_files import read_sections
from alignkit.reward_sampling.best_of_n import best_of_k_curve
from alignkit.reward_sampling.report_sections import report_sections


def best_of_n_report():
    rewards = [[0.0, 1.0, 0.5, 0.2], [1.0, 1.0, 0.0, 0.3]]
    curve = best_of_k_curve(rewards, {"format": [[0, 1, 1, 0], [1, 1, 0, 0]]}, [1, 2, 4])
    return {"method": "best-of-n", "prompts": 2, "n": 4, "scored_prompts": 2, "curve": curve}


def rounds_report():
    def record(k, reward, fmt):
        return {"round": k, "summary": f"round {k}", "seconds": {"total": 10.0 * k},
                "heldout": {"reward_mean": reward, "components": {"format": fmt}}}
    return {"method": "expert iteration", "records": [record(0, 0.5, 0.5), record(1, 0.75, 0.75), record(2, 0.9, 0.9)]}


def test_best_of_n_curves_hold_the_report_numbers():
    report = best_of_n_report()
    sections = report_sections(report)
    by_k, by_kl = sections["curves"]
    assert by_k["series"][0] == {"name": "reward", "x": [1, 2, 4], "y": [row["reward"] for row in report["curve"]]}
    assert by_k["series"][1]["name"] == "format"
    assert by_kl["series"][0]["x"] == [row["kl"] for row in report["curve"]] and by_kl["series"][0]["x"][0] == 0.0
    assert sections["tables"][0]["rows"][-1][:3] == [4, report["curve"][-1]["reward"], report["curve"][-1]["kl"]]


def test_rounds_and_rso_sections():
    rounds = report_sections(rounds_report())
    (curve,) = rounds["curves"]
    assert curve["series"][0]["x"] == [0, 1, 2] and curve["series"][0]["y"] == [0.5, 0.75, 0.9]
    assert [row[0] for row in rounds["tables"][0]["rows"]] == [0, 1, 2]
    rso = report_sections({"method": "rso", "heldout": {"before": {"reward_mean": 1.0, "components": {"rm": 0.2}},
                                                        "after": {"reward_mean": 1.5, "components": {"rm": 0.4}}}})
    assert rso == {"before_after": [{"metric": "RSO: held-out reward", "before": 1.0, "after": 1.5},
                                    {"metric": "RSO: held-out rm", "before": 0.2, "after": 0.4}]}
    assert report_sections({"method": "rso", "heldout": {"before": {}}}) is None  # no training measured yet
    assert report_sections({"curve": []}) is None


def test_alignkit_report_draws_them_on_one_page(tmp_path):
    paths = []
    for name, report in (("best_of_n", best_of_n_report()), ("expert_iteration", rounds_report())):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "report.json"
        path.write_text(json.dumps(report))
        paths.append(str(path))
    assert read_sections(paths[0])[0] == {"method": "best-of-n"}
    html_path, json_path = build_report(paths, str(tmp_path / "page"))
    page = html_path.read_text()
    assert "best-of-k reward against k" in page and "expert iteration: held-out answers" in page
    assert len(json.loads(json_path.read_text())["curves"]) == 3
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"method": "something else", "records": []}))
    with pytest.raises(DataError, match="not an alignkit results file"):
        read_sections(str(other))
