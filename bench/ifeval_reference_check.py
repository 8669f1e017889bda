"""alignkit's IFEval verdicts against the reference checker's, instruction by instruction.

Scores every (prompt, instruction) of one or more response files strict and loose with both the
reference implementation (google-research `instruction_following_eval`, which this bench imports
only when run) and alignkit, then prints the agreement per instruction type, per file and overall,
and every disagreement with the response text, so a reader can judge who is right.

    python bench/ifeval_reference_check.py REF_DIR [RESPONSES.jsonl ...] \
        [--prompts ../shared/data/ifeval/input_data.jsonl] [--nltk-data DIR] [--show 20] [--out diff.json]

REF_DIR holds the reference package folder `instruction_following_eval/` (instructions.py,
instructions_util.py, instructions_registry.py, evaluation_lib.py) and, unless response files are
named, the `input_response_data_*.jsonl` files scored. The reference needs absl-py, langdetect,
nltk, immutabledict (add their folder with --pythonpath) and NLTK's English `punkt_tab` data
(--nltk-data, a folder holding tokenizers/punkt_tab/english/).

Response records are matched to prompts by the exact prompt text, as the reference does; records
whose prompt is not in the prompt file are counted and skipped.

The reference's language checks call langdetect unseeded, so a borderline text can get a different
answer on each run; this bench seeds langdetect's shared factory with 0, the seed alignkit's own
detector uses, unless --unseeded. The reference's `keywords:letter_frequency` with a non-letter
argument ("!", "#") counts that character in google-research's current code, but draws a random
letter in older versions (and lm-eval's copy); agreement on those two instructions is meaningless
against such a version.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PROMPTS = os.path.join(ROOT, "..", "shared", "data", "ifeval", "input_data.jsonl")


@dataclass
class Agreement:
    total: int = 0
    strict: int = 0  # verdicts equal under strict scoring
    loose: int = 0
    ref_strict: int = 0  # passes, for the accuracies of both sides
    ref_loose: int = 0
    ak_strict: int = 0
    ak_loose: int = 0

    def add(self, ref: tuple[bool, bool], ak: tuple[bool, bool]) -> None:
        self.total += 1
        self.strict += ref[0] == ak[0]
        self.loose += ref[1] == ak[1]
        self.ref_strict += ref[0]
        self.ref_loose += ref[1]
        self.ak_strict += ak[0]
        self.ak_loose += ak[1]


@dataclass
class FileResult:
    path: str
    records: int = 0
    unmatched: int = 0  # records whose prompt is not in the prompt file
    overall: Agreement = field(default_factory=Agreement)
    by_type: dict[str, Agreement] = field(default_factory=lambda: defaultdict(Agreement))
    disagreements: list[dict] = field(default_factory=list)


def load_reference(ref_dir: str, nltk_data: str | None, extra_paths: list[str], seeded: bool):
    """Import the reference's evaluation_lib from `ref_dir`; nothing is imported before this call."""
    for path in [ref_dir, *extra_paths][::-1]:
        sys.path.insert(0, os.path.abspath(path))
    if nltk_data:
        os.environ["NLTK_DATA"] = os.path.abspath(nltk_data)
        import nltk

        nltk.data.path.insert(0, os.path.abspath(nltk_data))
    import langdetect

    if seeded:
        # The class attribute is what every detector of langdetect's shared factory reads.
        langdetect.DetectorFactory.seed = 0
    from instruction_following_eval import evaluation_lib  # the reference, on request

    return evaluation_lib


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def compare_file(path: str, prompts_by_text: dict, ref_lib, rules: str) -> FileResult:
    from alignkit.evaluation.ifeval import score_prompt

    result = FileResult(path)
    records = read_jsonl(path)
    result.records = len(records)
    to_response = {record["prompt"]: record["response"] for record in records}
    for text, response in to_response.items():
        raw, prompt = prompts_by_text.get(text, (None, None))
        if raw is None:
            result.unmatched += 1
            continue
        example = ref_lib.InputExample(key=raw["key"], instruction_id_list=raw["instruction_id_list"],
                                       prompt=raw["prompt"], kwargs=raw["kwargs"])
        ref_strict = ref_lib.test_instruction_following_strict(example, to_response).follow_instruction_list
        ref_loose = ref_lib.test_instruction_following_loose(example, to_response).follow_instruction_list
        ours = score_prompt(prompt, response, rules)
        for index, instruction_id in enumerate(raw["instruction_id_list"]):
            ref = (bool(ref_strict[index]), bool(ref_loose[index]))
            ak = (ours.strict[index], ours.loose[index])
            result.overall.add(ref, ak)
            result.by_type[instruction_id].add(ref, ak)
            if ref != ak:
                result.disagreements.append({
                    "file": os.path.basename(path), "key": raw["key"], "instruction_id": instruction_id,
                    "kwargs": raw["kwargs"][index], "reference": {"strict": ref[0], "loose": ref[1]},
                    "alignkit": {"strict": ak[0], "loose": ak[1]}, "response": response,
                })
    return result


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:7.3f}%" if whole else "      -"


def report(results: list[FileResult], show: int, width: int) -> str:
    lines = []
    total = Agreement()
    by_type: dict[str, Agreement] = defaultdict(Agreement)
    for result in results:
        a = result.overall
        lines.append(f"== {result.path}: {result.records} records, {result.records - result.unmatched} matched a prompt, "
                     f"{a.total} instructions")
        lines.append(f"   agreement strict {_pct(a.strict, a.total)} ({a.total - a.strict} differ)   "
                     f"loose {_pct(a.loose, a.total)} ({a.total - a.loose} differ)")
        lines.append(f"   instruction-level accuracy  reference strict {_pct(a.ref_strict, a.total)} loose "
                     f"{_pct(a.ref_loose, a.total)}   alignkit strict {_pct(a.ak_strict, a.total)} loose "
                     f"{_pct(a.ak_loose, a.total)}")
        for name, agreement in result.by_type.items():
            merged = by_type[name]
            for attr in vars(agreement):
                setattr(merged, attr, getattr(merged, attr) + getattr(agreement, attr))
        for attr in vars(a):
            setattr(total, attr, getattr(total, attr) + getattr(a, attr))
    lines.append("")
    lines.append(f"{'instruction type':<48} {'n':>5} {'strict agree':>13} {'loose agree':>13}")
    for name in sorted(by_type):
        a = by_type[name]
        lines.append(f"{name:<48} {a.total:>5} {_pct(a.strict, a.total):>13} {_pct(a.loose, a.total):>13}")
    lines.append(f"{'ALL':<48} {total.total:>5} {_pct(total.strict, total.total):>13} "
                 f"{_pct(total.loose, total.total):>13}")
    disagreements = [d for result in results for d in result.disagreements]
    lines.append("")
    lines.append(f"{len(disagreements)} disagreements" + (f" (first {show} shown)" if len(disagreements) > show else ""))
    for d in disagreements[:show]:
        ref, ak = d["reference"], d["alignkit"]
        text = d["response"] if width <= 0 else d["response"][:width]
        lines.append(f"-- {d['file']} key={d['key']} {d['instruction_id']} {json.dumps(d['kwargs'])}\n"
                     f"   reference strict={ref['strict']} loose={ref['loose']}   "
                     f"alignkit strict={ak['strict']} loose={ak['loose']}\n   response: {text!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref_dir", help="folder holding instruction_following_eval/ (and response files)")
    parser.add_argument("responses", nargs="*", help="response JSONL files (default: REF_DIR/input_response_data_*.jsonl)")
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS, help="IFEval input_data.jsonl")
    parser.add_argument("--nltk-data", help="folder with tokenizers/punkt_tab/english/ for the reference")
    parser.add_argument("--pythonpath", action="append", default=[], help="extra import folder for the reference's "
                        "dependencies (repeatable)")
    parser.add_argument("--rules", default="reference", choices=("reference", "alignkit"),
                        help="alignkit's rule set to compare (default: reference)")
    parser.add_argument("--unseeded", action="store_true", help="leave the reference's langdetect unseeded")
    parser.add_argument("--show", type=int, default=50, help="disagreements to print")
    parser.add_argument("--width", type=int, default=600, help="characters of each response to print (0: all)")
    parser.add_argument("--out", help="write every disagreement here as JSON")
    args = parser.parse_intermixed_args(argv)

    sys.path.insert(0, ROOT)
    from alignkit.evaluation.ifeval import load_ifeval_prompts

    files = args.responses or sorted(glob.glob(os.path.join(args.ref_dir, "input_response_data_*.jsonl")))
    if not files:
        print(f"error: no response files given and none in {args.ref_dir}", file=sys.stderr)
        return 2
    raw_prompts = read_jsonl(args.prompts)
    prompts_by_text = {raw["prompt"]: (raw, prompt) for raw, prompt in zip(raw_prompts, load_ifeval_prompts(args.prompts))}
    ref_lib = load_reference(args.ref_dir, args.nltk_data, args.pythonpath, seeded=not args.unseeded)
    results = [compare_file(path, prompts_by_text, ref_lib, args.rules) for path in files]
    print(report(results, args.show, args.width))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump([d for result in results for d in result.disagreements], handle, ensure_ascii=False, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
