"""MT-Bench single-answer averages from FastChat's judgment files: alignkit's import against FastChat's own code.

    .venv/bin/pip install --no-deps --target /tmp/fschat fschat==0.2.36
    .venv/bin/python bench/mtbench_reproduce.py path/to/gpt-4_single.jsonl [...] --fastchat /tmp/fschat

For each `model_judgment/<judge>_single.jsonl` file, FastChat's `llm_judge/show_result.py` computes its
three tables (mean score per model for turn 1, for turn 2, and over both) with its own pandas code; the
tables are taken from the calls it makes to print them. alignkit reads the same file through
`importers.load_graded_file` (the path of `alignkit eval grade --judgments`) and summarises it with
`grading.summarise`. The script prints both side by side and exits 1 when any model's number differs by
more than 1e-9, or when the two name different models.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from alignkit.evaluation.grading import summarise
from alignkit.evaluation.importers import load_graded_file
from alignkit.judges import SINGLE_SCALE

TABLES = ("turn 1", "turn 2", "average")


def fastchat_tables(path: Path) -> dict[str, dict[str, float]]:
    """table -> model -> score, as FastChat's show_result.py computes and prints them."""
    show_result = importlib.import_module("fastchat.llm_judge.show_result")
    printed = []
    show_result.print = lambda *values, **_: printed.extend(values)  # its DataFrames, not their text
    args = argparse.Namespace(bench_name="mt_bench", input_file=str(path), judge_model="gpt-4", model_list=None)
    show_result.display_result_single(args)
    frames = [value for value in printed if hasattr(value, "reset_index")]
    if len(frames) != len(TABLES):
        raise RuntimeError(f"show_result.py printed {len(frames)} tables, expected {len(TABLES)}")
    return {name: {row["model"]: float(row["score"]) for row in frame.reset_index().to_dict("records")}
            for name, frame in zip(TABLES, frames)}


def alignkit_tables(path: Path) -> dict[str, dict[str, float]]:
    results = {model: summarise(SINGLE_SCALE, items) for model, items in load_graded_file(path).items()}
    return {"turn 1": {m: r.per_turn[1].mean for m, r in results.items() if 1 in r.per_turn},
            "turn 2": {m: r.per_turn[2].mean for m, r in results.items() if 2 in r.per_turn},
            "average": {m: r.overall.mean for m, r in results.items()}}


def compare(path: Path) -> bool:
    theirs, ours = fastchat_tables(path), alignkit_tables(path)
    same = True
    print(f"\n{path}")
    print(f"{'table':<9}{'model':<36}{'FastChat':>12}{'alignkit':>12}  equal")
    for table in TABLES:
        for model in sorted(set(theirs[table]) | set(ours[table])):
            a, b = theirs[table].get(model), ours[table].get(model)
            equal = a is not None and b is not None and abs(a - b) <= 1e-9
            same &= equal
            show = lambda v: "-" if v is None else f"{v:.6f}"  # noqa: E731
            print(f"{table:<9}{model[:35]:<36}{show(a):>12}{show(b):>12}  {'yes' if equal else 'NO'}")
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("judgments", nargs="+", type=Path, help="FastChat <judge>_single.jsonl files")
    parser.add_argument("--fastchat", type=Path, help="folder holding the fastchat package (pip install --target)")
    args = parser.parse_args(argv)
    if args.fastchat:
        sys.path.insert(0, str(args.fastchat))
    results = [compare(path) for path in args.judgments]
    print(f"\n{sum(results)} of {len(results)} files: every number equal")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
