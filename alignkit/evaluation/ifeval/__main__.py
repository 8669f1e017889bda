"""Score a response file: python -m alignkit.evaluation.ifeval PROMPTS RESPONSES [--out result.json]."""
from __future__ import annotations

import argparse
import sys

from alignkit.atomic_write import write_json_atomic
from alignkit.data.errors import DataError, RecordError
from alignkit.evaluation.ifeval.data import IFEvalFormatError, load_ifeval_prompts, read_responses
from alignkit.evaluation.ifeval.scoring import IFEvalResult, coverage_note, score_ifeval
from alignkit.evaluation.ifeval.text import REFERENCE, RULES


def _summary(result: IFEvalResult, responses_path: str) -> str:
    lines = [
        f"prompt-level      strict {result.prompt_level_strict:.4f}   loose {result.prompt_level_loose:.4f}"
        f"   ({result.prompts.total} prompts, {result.n_answered} with a response)",
        f"instruction-level strict {result.instruction_level_strict:.4f}   loose {result.instruction_level_loose:.4f}"
        f"   ({result.instructions.total} instructions)",
    ]
    for name, tally in result.per_instruction.items():
        lines.append(f"  {name:<48} {tally.accuracy_strict:.3f} {tally.accuracy_loose:.3f}  n={tally.total}")
    note = coverage_note(result, responses_path)
    if note:
        lines.append(f"WARNING: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alignkit.evaluation.ifeval", description=__doc__)
    parser.add_argument("prompts", help="IFEval input_data.jsonl")
    parser.add_argument("responses", help='JSONL of {"prompt": ..., "response": ...}')
    parser.add_argument("--out", help="write every number (and per-prompt verdicts) here as JSON")
    parser.add_argument("--rules", choices=RULES, default=REFERENCE,
                        help="reference: the IFEval reference checker's verdicts (default); alignkit: its more "
                             "forgiving readings of sentences, paragraphs, bullets, quotes and the like")
    args = parser.parse_args(argv)
    try:
        result = score_ifeval(load_ifeval_prompts(args.prompts), read_responses(args.responses), args.rules)
        summary = _summary(result, args.responses)
    except (IFEvalFormatError, RecordError, DataError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary)
    if args.out:
        write_json_atomic(args.out, result.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
