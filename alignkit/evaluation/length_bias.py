"""Does a reward grow with length? Reward against response length on a model's own samples, and how long
each stage's responses are (`length_summary`, the demo's before/after lengths).

A reward model can be right on its evaluation pairs and still pay for length on the responses a policy
actually produces, which is what RL and best-of-n optimise against. `alignkit score --length-report DIR`
scores policy samples (e.g. `alignkit generate --n 4` outputs) and writes, per model, the Pearson and
Spearman correlations between each response's reward and its length in characters, with a scatter plot,
as a results file that `alignkit report` merges. Responses the reward could not score are left out and
counted.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from alignkit.atomic_write import write_json_atomic
from alignkit.evaluation.run_files import results_document


def correlations(rewards: Sequence[float], lengths: Sequence[float]) -> dict:
    """{"n", "pearson", "spearman"}; a correlation is None where undefined (under 3 points, or a
    constant series)."""
    from scipy.stats import pearsonr, spearmanr

    if len(rewards) != len(lengths):
        raise ValueError(f"{len(rewards)} rewards but {len(lengths)} lengths")
    n = len(rewards)
    if n < 3 or len(set(rewards)) < 2 or len(set(lengths)) < 2:
        return {"n": n, "pearson": None, "spearman": None}
    pearson, spearman = pearsonr(rewards, lengths).statistic, spearmanr(rewards, lengths).statistic
    return {"n": n, "pearson": None if math.isnan(pearson) else float(pearson),
            "spearman": None if math.isnan(spearman) else float(spearman)}


def length_summary(texts: Sequence[str]) -> dict:
    """How long a stage's responses are: mean and median characters, mean words (whitespace-separated)."""
    import statistics

    if not texts:
        raise ValueError("length_summary: no responses")
    chars = [len(text) for text in texts]
    return {"n": len(texts), "mean_chars": statistics.fmean(chars), "median_chars": float(statistics.median(chars)),
            "mean_words": statistics.fmean(len(text.split()) for text in texts)}


def _failed(row: dict, count: int) -> list[bool]:
    if "failures" in row:
        return [failure is not None for failure in row["failures"]]
    return [row.get("failure") is not None] * count


def samples_by_model(scorable: Sequence, rows: Sequence[dict], default_model: str) -> tuple[dict, int]:
    """{model: (rewards, lengths)} from `read_scorable` records and the scored rows written for them (in the
    same order), and how many responses were left out because the reward failed on them."""
    by_model: dict[str, tuple[list[float], list[int]]] = {}
    left_out = 0
    for (record, conversations), row in zip(scorable, rows, strict=True):
        rewards = row["rewards"] if "rewards" in row else [row["reward"]]
        model = str(record.data.get("model") or default_model)
        kept = by_model.setdefault(model, ([], []))
        for conversation, reward, failed in zip(conversations, rewards, _failed(row, len(rewards)), strict=True):
            if failed:
                left_out += 1
                continue
            kept[0].append(float(reward))
            kept[1].append(len(conversation[-1]["content"]))
    return by_model, left_out


def length_report(scorable: Sequence, rows: Sequence[dict], source: str) -> dict:
    """The results document: a score-vs-length scatter and a correlation table, one entry per model."""
    by_model, left_out = samples_by_model(scorable, rows, Path(source).stem)
    table_rows, series = [], []
    for model, (rewards, lengths) in sorted(by_model.items()):
        figures = correlations(rewards, lengths)
        mean = (lambda xs: sum(xs) / len(xs) if xs else None)  # noqa: E731
        table_rows.append([model, figures["n"], figures["pearson"], figures["spearman"], mean(lengths), mean(rewards)])
        series.append({"model": model, "lengths": lengths, "scores": rewards})
    sections = {
        "score_vs_length": {"length_unit": "characters", "series": series},
        "tables": [{"title": "Reward against response length (policy samples)",
                    "columns": ["model", "responses", "Pearson r", "Spearman rho", "mean length", "mean reward"],
                    "rows": table_rows}],
    }
    return results_document("score", {"source": source, "responses left out (reward failed)": left_out},
                             sections, {"correlations": {row[0]: {"n": row[1], "pearson": row[2], "spearman": row[3]}
                                                         for row in table_rows}})


def write_length_report(input_path: str, scored_path: str, out_dir: str) -> tuple[Path, dict]:
    """`score --length-report`: the report of `scored_path` (what `score` wrote for `input_path`) as
    out_dir/results.json; returns its path and the correlations per model."""
    import json

    from alignkit.evaluation.reward_eval import read_scorable

    with open(scored_path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    document = length_report(read_scorable(input_path), rows, input_path)
    path = Path(out_dir) / "results.json"
    write_json_atomic(path, document)
    return path, document["details"]["correlations"]
