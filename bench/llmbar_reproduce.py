"""LLMBar's published judge statistics, recomputed by alignkit from LLMBar's own evaluator files.

    .venv/bin/python bench/llmbar_reproduce.py /path/to/LLMBar/Dataset [--evaluator GPT-4/Vanilla]

Walks a local copy of LLMBar's `Dataset` folder for `<subset>/evaluators/<model>/<method>/` folders
holding both `result.json` and `statistics.json`. For each, it loads the subset's `dataset.json`, reads
`result.json` through alignkit's importer (no conversion by hand) and scores it with the LLMBar-compatible
agreement, then prints alignkit's numbers beside statistics.json's: accuracy per order
("correct_False" is order ab, "correct_True" order ba), their mean ("correct_average"), both orders
right ("correct_both") and agreement ("equal"). Counts are compared exactly (alignkit's share x pairs
against LLMBar's "k / n"). LLMBar's "kappa_*" entries are not compared: its evaluator maps a winner "2"
to 0 before comparing with the labels 1/2, so they are not Cohen's kappa of the verdicts. Exits 1 when
any number differs.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from alignkit.evaluation.importers import read_llmbar_results
from alignkit.evaluation.meta_eval import evaluate_predictions, load_llmbar

# statistics.json entry -> how alignkit's JudgeAccuracy gives it, as a share of the pairs
COMPARED = {"correct_False": lambda r: r.accuracy["ab"], "correct_True": lambda r: r.accuracy["ba"],
            "correct_both": lambda r: r.both_correct, "equal": lambda r: r.positional_agreement}
_COUNT = re.compile(r"^(\d+) / (\d+) = ")


def evaluator_folders(dataset_root: Path, evaluator: str | None) -> list[Path]:
    folders = sorted(path.parent for path in dataset_root.rglob("evaluators/*/*/result.json")
                     if (path.parent / "statistics.json").is_file())
    return [f for f in folders if evaluator is None or f"{f.parent.name}/{f.name}" == evaluator]


def compare(folder: Path) -> dict:
    """alignkit's and LLMBar's numbers for one evaluator folder, and whether each pair is equal."""
    subset = folder.parent.parent.parent
    pairs = load_llmbar([(str(subset), subset / "dataset.json")])
    result = evaluate_predictions(pairs, read_llmbar_results(folder / "result.json", pairs),
                                  f"{folder.parent.name}/{folder.name}", agreement="llmbar")
    published = json.loads((folder / "statistics.json").read_text())
    rows = []
    for key, ours in COMPARED.items():
        count, n = map(int, _COUNT.match(published[key]).groups())
        rows.append({"statistic": key, "llmbar": f"{count}/{n}", "alignkit": f"{round(ours(result) * n)}/{result.n_pairs}",
                     "equal": n == result.n_pairs and abs(ours(result) * n - count) < 1e-9})
    average = float(published["correct_average"].rstrip("%"))
    rows.append({"statistic": "correct_average", "llmbar": f"{average:.4f}%",
                 "alignkit": f"{result.mean_accuracy * 100:.4f}%",
                 "equal": abs(result.mean_accuracy * 100 - average) < 1e-9})
    return {"evaluator": result.name, "subset": str(subset), "n": result.n_pairs, "rows": rows,
            "alignkit_kappa": result.kappa, "failures": result.n_failures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="LLMBar's Dataset folder (or any folder below it)")
    parser.add_argument("--evaluator", help="only this <model>/<method>, e.g. GPT-4/Vanilla")
    parser.add_argument("--json", type=Path, help="also write every comparison here")
    args = parser.parse_args(argv)
    folders = evaluator_folders(args.dataset, args.evaluator)
    if not folders:
        print(f"{args.dataset}: no evaluators/<model>/<method>/ folder with result.json and statistics.json",
              file=sys.stderr)
        return 2
    comparisons = [compare(folder) for folder in folders]
    all_equal = True
    for c in comparisons:
        print(f"{c['evaluator']} on {c['subset']} ({c['n']} pairs, {c['failures']} failed judgments)")
        for row in c["rows"]:
            all_equal &= row["equal"]
            print(f"  {row['statistic']:<16}LLMBar {row['llmbar']:>12}   alignkit {row['alignkit']:>12}   "
                  f"{'equal' if row['equal'] else 'DIFFERENT'}")
        kappa = ", ".join(f"{order} {value:.4f}" if value is not None else f"{order} undefined"
                          for order, value in c["alignkit_kappa"].items())
        print(f"  alignkit Cohen's kappa vs gold (not in LLMBar's statistics): {kappa}")
    if args.json:
        args.json.write_text(json.dumps(comparisons, indent=2))
    print("all equal" if all_equal else "SOME NUMBERS DIFFER")
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
