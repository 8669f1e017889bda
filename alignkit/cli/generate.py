"""Commands that run a model over inputs: `generate` (answers to a prompts file), `chat` (a terminal
conversation) and `score` (scores for the responses in a file, from a reward model or any reward)."""
from __future__ import annotations

from alignkit.cli.local_model import CHAT_TEMPLATE_HELP, add_sampling_args, model_backend, sampling_params


def cmd_generate(a) -> None:
    from alignkit.generation.files import run_generate
    from alignkit.generation.specs import ThroughputBackend
    from alignkit.paths import check_output_file

    # Inputs and output are checked before the model loads, so a mistake costs no load or generation.
    check_output_file(a.out, "--out")
    counted = []

    def load_backend():
        counted.append(ThroughputBackend(model_backend(a.model, a.dtype, a.batch_size, a.chat_template)))
        return counted[0]

    n = run_generate(a.prompts, a.out, load_backend, sampling_params(a), model_name=a.name or a.model)
    b = counted[0]
    # Generation alone (model load and files left out): the figure bench/gpu_check.sh reads.
    print(f"wrote {n} responses to {a.out}; generated {b.tokens} tokens in {b.seconds:.2f}s, "
          f"{b.tokens_per_s():.1f} tokens/s")


def cmd_chat(a) -> None:
    from alignkit.generation.chat_repl import chat_loop

    chat_loop(model_backend(a.model, a.dtype, 1, a.chat_template), sampling_params(a), system=a.system)


def cmd_score(a) -> None:
    from alignkit.paths import check_output_dir, check_output_file

    check_output_file(a.out, "--out")  # before the model loads and every record is scored
    if a.length_report:
        check_output_dir(a.length_report, "--length-report")
    if a.rewards:
        _score_with_rewards(a)
    else:
        _score_with_model(a)
    if a.length_report:
        _write_length_report(a)


def _write_length_report(a) -> None:
    from alignkit.evaluation.length_bias import write_length_report

    path, correlations = write_length_report(a.input, a.out, a.length_report)
    for model, figures in correlations.items():
        def fmt(value):
            return "n/a" if value is None else f"{value:+.3f}"
        print(f"reward vs length, {model}: Pearson {fmt(figures['pearson'])}, Spearman {fmt(figures['spearman'])} "
              f"over {figures['n']} responses")
    print(f"length report: {path}")


def _score_with_model(a) -> None:
    from alignkit.evaluation.reward_eval import run_score

    # The options' defaults are None so that --rewards can tell them apart from options given.
    dtype = "fp32" if a.dtype is None else a.dtype
    batch_size = 8 if a.batch_size is None else a.batch_size
    max_length = 2048 if a.max_length is None else a.max_length
    written, cut = run_score(a.model, a.input, a.out, dtype=dtype, batch_size=batch_size, max_length=max_length)
    note = f" ({cut} cut from the left to --max-length {max_length})" if cut else ""
    print(f"wrote {written} scored records to {a.out}{note}")


def _score_with_rewards(a) -> None:
    from alignkit.evaluation.reward_eval import run_score_rewards

    # Options of the reward-model path would be silently ignored here: each rm spec sets its own.
    given = [flag for flag, value in (("--batch-size", a.batch_size), ("--max-length", a.max_length),
                                      ("--dtype", a.dtype)) if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: only apply with --model; with --rewards set batch_size, max_length "
                         "and dtype in a reward spec of kind rm")
    written, responses, failed = run_score_rewards(a.rewards, a.input, a.out)
    note = (f"; {failed} of {responses} responses could not be scored (they hold the reward's failure_reward, "
            "and the reason in failure/failures)") if failed else ""
    print(f"wrote {written} scored records ({responses} responses) to {a.out}{note}")


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="answer a file of prompts (JSONL/JSON/Parquet/CSV) into a JSONL file")
    p.add_argument("--model", default="embedded",
                   help="'embedded', a model folder, a hub id, 'vllm:<model>' or 'openai:<model>@<url>'")
    p.add_argument("--name", help="the model's name in the output rows, and so in task files and tables "
                                  "(default: the --model value)")
    p.add_argument("--chat-template", default="", help=CHAT_TEMPLATE_HELP)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    add_sampling_args(p)
    p.set_defaults(func=cmd_generate)


def add_chat(sub) -> None:
    p = sub.add_parser("chat", help="talk to a model in the terminal")
    p.add_argument("--model", default="embedded",
                   help="'embedded', a model folder, a hub id, 'vllm:<model>' or 'openai:<model>@<url>'")
    p.add_argument("--chat-template", default="", help=CHAT_TEMPLATE_HELP)
    p.add_argument("--system", default=None)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    add_sampling_args(p)
    p.set_defaults(func=cmd_chat)


def add_score(sub) -> None:
    p = sub.add_parser(
        "score", help="score the responses in a file with a reward model or any reward (JSONL out: `reward` for "
                      "one response, `rewards` for a list, which preference loaders rank by)",
        description="Score the responses in a file (e.g. `alignkit generate --n 4` output) with a reward-model "
                    "folder (--model) or with reward specs (--rewards: a verifier, a judge, a reward model, a "
                    "Python function or a weighted sum). Each record gets `reward` (one response) or `rewards` "
                    "(a list); with --rewards also the reason a response could not be scored in `failure` / "
                    "`failures` (it keeps the spec's failure_reward) and each reward's own scores in "
                    "`reward_components`. Train on the result with a pair rule, e.g. `alignkit dpo "
                    "data.train=[scored.jsonl] data.pair_rule=best_vs_worst`.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a reward-model folder (from alignkit rm)")
    source.add_argument("--rewards", help="a YAML file with a `rewards:` list of reward specs, written as in an RL "
                                          "config, e.g. rewards: [{kind: format}, {kind: python, function: "
                                          "'pkg.mod:fn', weight: 0.5}]")
    p.add_argument("--input", required=True, help="records with prompt/messages and response(s), or whole "
                                                  "conversations ending with an assistant turn; with --rewards "
                                                  "the record's other fields reach the reward (e.g. `format`)")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=None, help="--model: sequences per packed forward (default 8)")
    p.add_argument("--max-length", type=int, default=None,
                   help="--model: longer sequences lose their start (default 2048)")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="--model: weights as loaded (default fp32)")
    p.add_argument("--length-report", metavar="DIR",
                   help="also write DIR/results.json: reward against response length per model (Pearson, Spearman, "
                        "a scatter plot) for `alignkit report`")
    p.set_defaults(func=cmd_score)
