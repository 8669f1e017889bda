"""The evaluation commands: `eval ifeval|pairwise|grade|refusal`, `leaderboard`, `meta-eval`, `report` and
`rm-eval`. Each checks its output path first, so a mistake there costs no model load or judging."""
from __future__ import annotations

import json
import sys

from alignkit.cli.judge_args import add_judge_args, judge_options
from alignkit.cli.local_model import CHAT_TEMPLATE_HELP, add_sampling_args, model_backend, sampling_params

# evaluation.importers' formats, named here so that building the parser imports no evaluation code
PREDICTION_FORMATS = ("alignkit", "llmbar", "fastchat-pair", "alpacaeval")
BATTLE_FORMATS = ("alignkit", "fastchat-pair", "mt-bench-human", "alpacaeval")


def cmd_eval_ifeval(a) -> None:
    from alignkit.evaluation.ifeval import run_ifeval
    from alignkit.paths import check_output_file

    if a.out:
        check_output_file(a.out, "--out")  # before any model loads and generates
    result, note = run_ifeval(a.prompts, a.out, responses=a.responses,
                              load_backend=lambda: model_backend(a.model, a.dtype, a.batch_size, a.chat_template),
                              params=sampling_params(a), limit=a.limit, rules=a.rules)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    d = result.to_dict()
    print(json.dumps({k: d[k] for k in d if k.startswith(("prompt_level", "instruction_level", "n_"))}, indent=2))


def cmd_eval_pairwise(a) -> None:
    from alignkit.evaluation.commands import eval_pairwise
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")  # before the judge loads and every pair is judged
    eval_pairwise(a.outputs, a.reference, a.out, judge_options(a), model=a.model_name,
                  reference_model=a.reference_name, limit=a.limit, report=a.report)


def cmd_eval_grade(a) -> None:
    from alignkit.evaluation.commands import eval_grade
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")  # before the judge loads and every answer is graded
    if a.judgments:
        from alignkit.evaluation.commands import eval_grade_imported

        given = [name for name in ("answers", "items", "rubric", "turns") if getattr(a, name)]
        if given:
            raise ValueError(f"--judgments reads ratings already given; --{given[0]} has no use with it")
        eval_grade_imported(a.judgments, a.out, questions=a.questions, fmt=a.judgments_format, report=a.report)
        return
    try:
        turns = [int(t) for t in a.turns.split(",")] if a.turns else None
    except ValueError:
        raise ValueError(f"--turns must be comma-separated turn numbers such as 1 or 1,2; got {a.turns!r}") from None
    eval_grade(a.out, judge_options(a), questions=a.questions, answers=a.answers, items=a.items, rubric=a.rubric,
               turns=turns, model=a.model_name, limit=a.limit, use_reference=not a.no_reference, report=a.report)


def cmd_eval_refusal(a) -> None:
    from alignkit.evaluation.refusal import run_refusal_eval
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")  # before the model loads and answers every prompt
    judge = judge_options(a) if a.judge else None

    def load_backend():
        return model_backend(a.model, a.dtype, a.batch_size, a.chat_template)

    run_refusal_eval(a.out, prompts_path=a.prompts, responses=a.responses, load_backend=load_backend,
                     params=sampling_params(a), judge=judge, model=a.model_name or (a.model if a.model else None),
                     limit=a.limit, report=a.report)


def cmd_leaderboard(a) -> None:
    from alignkit.evaluation.commands import leaderboard
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")  # before the judge loads and every battle is judged
    leaderboard(a.out, battles=a.battles, outputs=a.outputs or (), judge=judge_options(a), limit=a.limit,
                anchor=a.anchor, n_bootstrap=a.bootstrap, seed=a.seed, report=a.report, battles_format=a.battles_format)


def cmd_meta_eval(a) -> None:
    from alignkit.evaluation.commands import run_meta_eval
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")  # before the judge loads and every pair is judged
    strategies = [s for s in a.strategies.split(",") if s.strip()] if a.strategies else []
    judge = judge_options(a) if strategies else None
    run_meta_eval(a.pairs, a.out, judge, strategies=strategies, predictions=a.predictions or (), limit=a.limit,
                  report=a.report, agreement=a.agreement, predictions_format=a.predictions_format)


def cmd_report(a) -> None:
    from alignkit.evaluation.commands import build_report
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")
    build_report(a.results, a.out, a.title)


def cmd_rm_eval(a) -> None:
    from alignkit.evaluation.reward_eval import run_rm_eval
    from alignkit.paths import check_output_file

    if a.out:
        check_output_file(a.out, "--out")  # before the model loads and every pair is scored
    result = run_rm_eval(a.model, a.data, a.out, dtype=a.dtype, batch_size=a.batch_size, max_length=a.max_length,
                         skip_bad=a.skip_bad)
    print(result.table())
    if result.truncated:
        print(f"{result.truncated} sequences were cut from the left to --max-length {a.max_length}")


def add_eval(sub) -> None:
    """`eval` and its subcommands: ifeval, pairwise, grade, refusal."""
    from alignkit.evaluation.ifeval.text import RULES as IFEVAL_RULES

    ev = sub.add_parser("eval", help="evaluate models").add_subparsers(dest="eval_command", required=True)
    p = ev.add_parser("ifeval", help="verifiable instruction following (IFEval prompt set)")
    p.add_argument("--prompts", required=True, help="IFEval input_data.jsonl")
    p.add_argument("--responses", help="JSONL of {prompt, response}; omit to generate with --model")
    p.add_argument("--model", default="embedded", help="'embedded', a folder, 'vllm:<model>' or 'openai:<model>@<url>'")
    p.add_argument("--chat-template", default="", help=CHAT_TEMPLATE_HELP)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--out", help="write every number as JSON here")
    p.add_argument("--rules", default=IFEVAL_RULES[0], choices=IFEVAL_RULES,
                   help="reference: verdicts exactly as Google's IFEval checker gives them; alignkit: its more "
                        "forgiving older readings (curly quotes, '***' dividers, ...)")
    add_sampling_args(p)
    p.set_defaults(func=cmd_eval_ifeval)

    p = ev.add_parser("pairwise", help="win rate of a model's outputs against a reference's, judged pairwise")
    p.add_argument("--outputs", required=True, help="model outputs JSONL: {prompt|instruction, response|output, id?}")
    p.add_argument("--reference", required=True, help="reference outputs JSONL, same items (matched by id or prompt)")
    p.add_argument("--out", default="runs/eval-pairwise", help="run folder: results.json, judgments.jsonl, cache")
    p.add_argument("--model-name", help="default: the records' model field or the file name")
    p.add_argument("--reference-name")
    p.add_argument("--limit", type=int, default=0, help="judge only the first N items (0: all)")
    p.add_argument("--report", action="store_true", help="also write report.html and report.json")
    add_judge_args(p)
    p.set_defaults(func=cmd_eval_pairwise)

    p = ev.add_parser("grade", help="single-answer grading 1-10 per category (MT-Bench), or rubric grading 1-5")
    p.add_argument("--questions", help="MT-Bench style question.jsonl")
    p.add_argument("--answers", help="JSONL {question_id, turns} or FastChat {question_id, choices: [{turns}]}")
    p.add_argument("--rubric", help="rubric mode: a text file with the rubric (turn 1 of each question, or --items)")
    p.add_argument("--items", help="rubric mode: JSONL {id, instruction, response, rubric?, reference?, category?}")
    p.add_argument("--turns", help="comma-separated turns to grade, e.g. 1 or 1,2 (default: all)")
    p.add_argument("--no-reference", action="store_true", help="do not show the judge reference answers")
    p.add_argument("--judgments", help="summarise ratings another tool gave instead of grading: FastChat's "
                                       "<judge>_single.jsonl (per model: turn 1, turn 2, average; with --questions "
                                       "also per category)")
    p.add_argument("--judgments-format", default="auto", choices=["auto", "fastchat-single"],
                   help="format of --judgments (auto: told from its first record)")
    p.add_argument("--model-name", help="default: the answers file name")
    p.add_argument("--out", default="runs/eval-grade")
    p.add_argument("--limit", type=int, default=0, help="grade only the first N questions/items (0: all)")
    p.add_argument("--report", action="store_true", help="also write report.html and report.json")
    add_judge_args(p, strategy=False)
    p.set_defaults(func=cmd_eval_grade)

    p = ev.add_parser("refusal", help="refusal rate on prompts that should be refused and over-refusal rate on "
                                      "risky-looking prompts that should be answered, per category")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="answer the prompts with this model: 'embedded', a folder, "
                                        "'vllm:<model>', 'openai:<model>@<url>'")
    source.add_argument("--responses", help="JSONL {prompt|instruction, response|output, id?} answering the prompts")
    p.add_argument("--prompts", help="JSONL {id, category, should_refuse, prompt} (default: the built-in set, "
                                     "80 prompts)")
    p.add_argument("--out", default="runs/eval-refusal", help="run folder: results.json, refusals.jsonl")
    p.add_argument("--model-name", help="default: the --model spec, or the responses' model field or file name")
    p.add_argument("--limit", type=int, default=0, help="only the first N prompts (0: all)")
    p.add_argument("--chat-template", default="", help=CHAT_TEMPLATE_HELP)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--report", action="store_true", help="also write report.html and report.json")
    add_sampling_args(p)
    add_judge_args(p, strategy=False)
    # Patterns alone unless a judge is named; a refusal shows in the first sentences, so answers stay short.
    p.set_defaults(func=cmd_eval_refusal, judge=None, max_tokens=128)


def add_leaderboard(sub) -> None:
    p = sub.add_parser("leaderboard", help="Bradley-Terry ratings with bootstrap CIs from battles, or by judging "
                                           "several models' outputs pairwise")
    p.add_argument("--battles", help="JSONL {model_a, model_b, winner: a|b|tie} (e.g. battles.jsonl of eval pairwise "
                                     "or of annotate export), FastChat pairwise judgments (<judge>_pair.jsonl), MT-Bench "
                                     "human judgments, or AlpacaEval annotations.json")
    p.add_argument("--battles-format", default="auto", choices=["auto", *BATTLE_FORMATS],
                   help="format of --battles (auto: told from its first record)")
    p.add_argument("--outputs", nargs="+", help="two or more model output files answering the same items")
    p.add_argument("--anchor", help="model pinned at rating 1000 (default: alphabetically first)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="with --outputs: judge only the first N items (0: all)")
    p.add_argument("--out", default="runs/leaderboard")
    p.add_argument("--report", action="store_true", help="also write report.html and report.json")
    add_judge_args(p)
    p.set_defaults(func=cmd_leaderboard)


def add_meta_eval(sub) -> None:
    p = sub.add_parser("meta-eval", help="how good is a judge: accuracy on gold-labelled pairs (LLMBar format) per "
                                         "order, positional agreement and failure rate, per strategy and file")
    p.add_argument("--pairs", nargs="+", required=True,
                   help="LLMBar JSON files (input, output_1, output_2, label 1|2|\"tie\") or MT-Bench human judgments "
                        "(question_id, model_a, model_b, winner, turn, conversation_a/b), each PATH or NAME=PATH; "
                        "pair ids are <NAME or PATH>-<index> unless the file has ids")
    p.add_argument("--strategies", default=None,
                   help="comma-separated judge strategies, e.g. plain,rules,cot,metrics,reference,swap,rules+metrics")
    p.add_argument("--predictions", nargs="+",
                   help="verdict files produced elsewhere, each PATH or NAME=PATH: alignkit JSONL {id, order?, verdict}, "
                        "an LLMBar evaluator's result.json, FastChat pairwise judgments (matched to MT-Bench human "
                        "judgments loaded with --pairs) or AlpacaEval annotations.json (matched by content); files of "
                        "one name are one judge (default name: the file stem, or <model>/<method> for LLMBar)")
    p.add_argument("--predictions-format", default="auto", choices=["auto", *PREDICTION_FORMATS],
                   help="format of the --predictions files (auto: told from their first record)")
    p.add_argument("--agreement", default="same-output", choices=["same-output", "llmbar"],
                   help="positional agreement: both orders chose the same output (same-output), or the two verdicts "
                        "are equal, two failures included, as LLMBar's tables count it (llmbar)")
    p.add_argument("--limit", type=int, default=0, help="the first N pairs of each file (0: all)")
    p.add_argument("--out", default="runs/meta-eval")
    p.add_argument("--report", action="store_true", help="also write report.html and report.json")
    add_judge_args(p, strategy=False)
    p.add_argument("--single-order", action="store_true", help="judge ab only (default: both orders)")
    p.add_argument("--allow-tie", action="store_true", help="offer the judge 'Verdict: tie' (counts as wrong)")
    p.add_argument("--use-logprobs", action="store_true", help="verdict from top log-probabilities")
    p.set_defaults(func=cmd_meta_eval)


def add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report (+ JSON) from results files")
    p.add_argument("--results", nargs="+", required=True,
                   help="results.json of eval/leaderboard/meta-eval runs, report.json files, or eval ifeval --out files")
    p.add_argument("--out", required=True, help="folder for report.html and report.json")
    p.add_argument("--title", default=None)
    p.set_defaults(func=cmd_report)


def add_rm_eval(sub) -> None:
    p = sub.add_parser("rm-eval", help="reward-model accuracy on preference sets (overall, per file, per subset) "
                                       "with the length bias of its scores")
    p.add_argument("--model", required=True, help="a reward-model folder (from alignkit rm)")
    p.add_argument("--data", required=True, nargs="+", help="pair files (prompt/chosen/rejected) or LLMBar files "
                                                            "(input/output_1/output_2/label)")
    p.add_argument("--out", help="write every number as JSON here")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per packed forward")
    p.add_argument("--max-length", type=int, default=2048, help="longer sequences lose their start")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) bad records instead of stopping")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.set_defaults(func=cmd_rm_eval)
