"""What `alignkit report` draws from these methods' report.json files: best-of-n's reward against k and
against KL, the held-out figures round by round (expert iteration, iterative DPO), RSO's held-out figures
before and after. Plain dicts in the report's section schema (evaluation/report.py), so

    alignkit report --results runs/best_of_n/report.json runs/expert_iteration/report.json --out runs/report

puts the curves on one page beside any evaluation results.
"""
from __future__ import annotations

ROUND_METHODS = ("expert iteration", "iterative DPO")


def report_sections(report: dict) -> dict | None:
    """The report sections of a method's report.json, or None when `report` is not one."""
    method = report.get("method")
    if method == "best-of-n" and isinstance(report.get("curve"), list):
        return best_of_n_sections(report)
    if method in ROUND_METHODS and isinstance(report.get("records"), list):
        return rounds_sections(report)
    if method == "rso" and isinstance(report.get("heldout"), dict) and "after" in report["heldout"]:
        return before_after_sections("RSO", report["heldout"]["before"], report["heldout"]["after"])
    return None


def best_of_n_sections(report: dict) -> dict:
    curve = report["curve"]
    ks, kls = [row["k"] for row in curve], [row["kl"] for row in curve]
    names = list(curve[0]["components"]) if curve else []
    series = [{"name": "reward", "x": ks, "y": [row["reward"] for row in curve]}]
    series += [{"name": name, "x": ks, "y": [row["components"][name] for row in curve]} for name in names]
    return {
        "curves": [
            {"title": f"best-of-k reward against k ({report['scored_prompts']} prompts, n = {report['n']})",
             "x_label": "k", "y_label": "mean of the chosen sample", "series": series},
            {"title": "best-of-k reward against its KL from the sampling policy",
             "x_label": "KL (nats), log k - (k-1)/k", "y_label": "mean reward",
             "series": [{"name": "reward", "x": kls, "y": [row["reward"] for row in curve]}]}],
        "tables": [{"title": "best-of-k", "columns": ["k", "reward", "KL (nats)", *names],
                    "rows": [[row["k"], row["reward"], row["kl"], *(row["components"][n] for n in names)]
                             for row in curve]}],
    }


def rounds_sections(report: dict) -> dict:
    records = report["records"]
    rounds = [record["round"] for record in records]
    names = list(records[0]["heldout"]["components"]) if records else []
    series = [{"name": "reward", "x": rounds, "y": [r["heldout"]["reward_mean"] for r in records]}]
    series += [{"name": name, "x": rounds, "y": [r["heldout"]["components"][name] for r in records]} for name in names]
    method = report["method"]
    return {
        "curves": [{"title": f"{method}: held-out answers after each round (round 0: the starting model)",
                    "x_label": "round", "y_label": "held-out mean", "series": series}],
        "tables": [{"title": f"{method}: rounds", "columns": ["round", "what it did", "reward", *names, "seconds"],
                    "rows": [[r["round"], r["summary"], r["heldout"]["reward_mean"],
                              *(r["heldout"]["components"][n] for n in names), r["seconds"]["total"]]
                             for r in records]}],
    }


def before_after_sections(method: str, before: dict, after: dict) -> dict:
    rows = [{"metric": f"{method}: held-out reward", "before": before["reward_mean"], "after": after["reward_mean"]}]
    rows += [{"metric": f"{method}: held-out {name}", "before": value, "after": after["components"][name]}
             for name, value in before["components"].items()]
    return {"before_after": rows}
