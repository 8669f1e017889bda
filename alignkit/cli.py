"""`alignkit <command>`: a thin layer over the Python API. Each command parses its arguments,
calls one function, and turns the project's known errors into a one-line message and exit code 2
(set ALIGNKIT_DEBUG=1 for the traceback)."""
from __future__ import annotations

import argparse
import os
import sys


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


CHAT_TEMPLATE_HELP = ("for a model whose tokenizer has no chat template: a Jinja template file, or chatml, "
                      "llama3 or inst (default: the tokenizer's own)")


def _params(a):
    from alignkit.generation.backend import SamplingParams

    return SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
                          n=a.n, seed=a.seed, stop=tuple(a.stop))


def _local_backend(model: str, dtype: str, batch_size: int, chat_template: str = ""):
    from alignkit.generation.local import LocalBackend
    from alignkit.models.loading import load_model, load_tokenizer, use_chat_template

    # The tokenizer first: a missing chat template is reported before the model loads.
    tok = use_chat_template(load_tokenizer(model), chat_template, model, option="--chat-template")
    m, _ = load_model(model, dtype=dtype)
    return LocalBackend(m, tok, batch_size=batch_size, model_id=model or "embedded")


def cmd_sft(a) -> None:
    from alignkit.config import load_config
    from alignkit.training.sft import SFTConfig, run_sft

    cfg = load_config(SFTConfig, a.config, a.overrides)
    run_sft(cfg)
    print(f"saved to {os.path.join(cfg.train.output_dir, 'final')}")


def cmd_generate(a) -> None:
    from alignkit.generation.files import generate_file, read_prompts
    from alignkit.paths import check_output_file

    # Inputs and output are checked before the model loads, so a mistake costs no load or generation.
    check_output_file(a.out, "--out")
    prompts, _ = read_prompts(a.prompts)
    params = _params(a)
    n = generate_file(_local_backend(a.model, a.dtype, a.batch_size, a.chat_template), prompts, a.out, params)
    print(f"wrote {n} responses to {a.out}")


def cmd_chat(a) -> None:
    from alignkit.generation.chat_repl import chat_loop

    chat_loop(_local_backend(a.model, a.dtype, 1, a.chat_template), _params(a), system=a.system)


def cmd_prepare(a) -> None:
    from alignkit.models.loading import embedded_model_dir

    print(embedded_model_dir())


def cmd_demo(a) -> None:
    from alignkit.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out_dir=a.out, sft_steps=a.sft_steps, dpo_steps=a.dpo_steps, heldout_limit=a.heldout_limit,
                        judge_pairs=a.judge_pairs))


def cmd_eval_ifeval(a) -> None:
    import json

    from alignkit.evaluation.ifeval import coverage_note, load_ifeval_prompts, read_responses, score_ifeval
    from alignkit.paths import check_output_file

    if a.out:
        check_output_file(a.out, "--out")  # before any model loads and generates
    prompts = load_ifeval_prompts(a.prompts)
    if a.limit:
        prompts = prompts[: a.limit]
    if a.responses:
        responses = read_responses(a.responses)
    else:
        from alignkit.generation.local import generate_texts

        backend = _local_backend(a.model, a.dtype, a.batch_size, a.chat_template)
        outs = generate_texts(backend, [[{"role": "user", "content": p.prompt}] for p in prompts], _params(a))
        responses = {p.prompt: o[0].text for p, o in zip(prompts, outs)}
    result = score_ifeval(prompts, responses)
    note = coverage_note(result, a.responses) if a.responses else None  # raises when nothing matched
    if note:
        print(f"warning: {note}", file=sys.stderr)
    d = result.to_dict()
    print(json.dumps({k: d[k] for k in d if k.startswith(("prompt_level", "instruction_level", "n_"))}, indent=2))
    if a.out:
        from alignkit.evaluation.run_files import write_json_atomic

        write_json_atomic(a.out, d)


# ---- preference learning and reward models ----

def config_keys_help(config, prefix: str = "") -> str:
    """One line per key of a config (a dataclass instance holding the defaults), `key (default):
    comment`, read from the dataclass source so the help never drifts from the field comments."""
    import dataclasses
    import inspect
    import re

    comments = {}
    for klass in reversed(type(config).__mro__):
        if dataclasses.is_dataclass(klass):
            for line in inspect.getsource(klass).splitlines():
                found = re.match(r"\s+(\w+): [^#]*#\s*(.+)$", line)
                if found:
                    comments[found.group(1)] = found.group(2).strip()
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(config_keys_help(value, f"{prefix}{f.name}."))
            continue
        default = f"{value!r}" if value not in ("", None, []) else "empty"
        lines.append(f"  {prefix}{f.name} ({default}): {comments.get(f.name, '')}".rstrip(": "))
    return "\n".join(lines)


def cmd_pref(a, preset: str | None = None) -> None:
    from alignkit.config import ConfigError, load_config
    from alignkit.training.pref_run import PrefConfig, run_pref

    overrides = list(a.overrides)
    if preset is not None:
        chosen = [o.split("=", 1)[1].strip() for o in overrides if o.split("=", 1)[0].strip() == "loss"]
        if any(c != preset for c in chosen):
            raise ConfigError(f"`alignkit {preset}` presets loss={preset}; use `alignkit pref loss=...` for another loss")
        overrides = [f"loss={preset}"] + overrides
    cfg = load_config(PrefConfig, a.config, overrides)
    run_pref(cfg)
    print(f"saved to {os.path.join(cfg.train.output_dir, 'final')}")


def cmd_rm(a) -> None:
    from alignkit.config import load_config
    from alignkit.training.reward import RMConfig, run_rm

    cfg = load_config(RMConfig, a.config, a.overrides)
    run_rm(cfg)
    print(f"saved to {os.path.join(cfg.train.output_dir, 'final')}")


def cmd_score(a) -> None:
    from alignkit.data.readers import read_records
    from alignkit.evaluation.reward_eval import score_file
    from alignkit.models.reward import load_reward_model
    from alignkit.paths import check_output_file

    check_output_file(a.out, "--out")  # before the model loads and every record is scored
    # Data first, as in training: an unreadable file fails in seconds, before the model loads.
    for _ in read_records(a.input):
        pass
    model, tok = load_reward_model(a.model, dtype=a.dtype)
    written, cut = score_file(model, tok, a.input, a.out, batch_size=a.batch_size, max_length=a.max_length)
    note = f" ({cut} cut from the left to --max-length {a.max_length})" if cut else ""
    print(f"wrote {written} scored records to {a.out}{note}")


def cmd_rm_eval(a) -> None:
    from alignkit.evaluation.reward_eval import load_eval_pairs, rm_eval, write_result
    from alignkit.models.reward import load_reward_model
    from alignkit.paths import check_output_file

    if a.out:
        check_output_file(a.out, "--out")  # before the model loads and every pair is scored
    # Data first, as in training: a bad file or record fails in seconds, before the model loads.
    load_eval_pairs(a.data, skip_bad=a.skip_bad)
    model, tok = load_reward_model(a.model, dtype=a.dtype)
    result = rm_eval(model, tok, a.data, batch_size=a.batch_size, max_length=a.max_length, skip_bad=a.skip_bad)
    print(result.table())
    if result.truncated:
        print(f"{result.truncated} sequences were cut from the left to --max-length {a.max_length}")
    if a.out:
        write_result(result, a.out)


def add_preference_commands(sub) -> None:
    from alignkit.training.pref_run import PrefConfig
    from alignkit.training.preference import ALL_LOSSES, SHORTHANDS
    from alignkit.training.reward import RMConfig

    fmt = argparse.RawDescriptionHelpFormatter
    pref_keys = "config keys (YAML or key=value):\n" + config_keys_help(PrefConfig())
    p = sub.add_parser("pref", help=f"preference training; loss={'|'.join(ALL_LOSSES)}",
                       epilog=pref_keys, formatter_class=fmt)
    p.add_argument("--config", help="YAML file (top-level loss keys, sections model, data, train, control)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss=ipo beta=0.5 train.lr=1e-6")
    p.set_defaults(func=cmd_pref)
    for name in SHORTHANDS:
        p = sub.add_parser(name, help=f"= alignkit pref loss={name}", epilog=pref_keys, formatter_class=fmt)
        p.add_argument("--config", help="YAML file (as for alignkit pref)")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        p.set_defaults(func=lambda a, preset=name: cmd_pref(a, preset))

    p = sub.add_parser("rm", help="train a reward model (scalar head, Bradley-Terry) on preference pairs",
                       epilog="config keys (YAML or key=value):\n" + config_keys_help(RMConfig()), formatter_class=fmt)
    p.add_argument("--config", help="YAML file (sections model, data, train)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. center_coefficient=0.01")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("score", help="score responses in a file with a reward model (JSONL out: `reward` for one "
                                     "response, `rewards` for a list)")
    p.add_argument("--model", required=True, help="a reward-model folder (from alignkit rm)")
    p.add_argument("--input", required=True, help="records with prompt/messages and response(s), or whole "
                                                  "conversations ending with an assistant turn")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per packed forward")
    p.add_argument("--max-length", type=int, default=2048, help="longer sequences lose their start")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.set_defaults(func=cmd_score)

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


# ---- evaluation: judges, win rates, grading, leaderboards, meta-evaluation, reports, serving ----

JUDGE_SPEC_HELP = ("judge backend: 'embedded', a model folder or hub id (loaded here), "
                   "'openai:<model>@<base_url>' (any OpenAI-compatible server; key from --judge-api-key-env), "
                   "'openai:<model>' (URL from --judge-base-url or OPENAI_BASE_URL) or "
                   "'vllm:<model>' (embedded, a folder or hub id; needs vLLM and a GPU)")


def _judge_args(p: argparse.ArgumentParser, strategy: bool = True) -> None:
    g = p.add_argument_group("judge")
    g.add_argument("--judge", default="embedded", help=JUDGE_SPEC_HELP)
    if strategy:
        g.add_argument("--strategy", default="plain",
                       help="plain, or a '+'-joined set of rules, cot, metrics, reference, swap (e.g. rules+cot)")
        g.add_argument("--single-order", action="store_true",
                       help="judge each pair in one order only (default: both orders, reported separately)")
        g.add_argument("--allow-tie", action="store_true", help="offer the judge 'Verdict: tie'")
        g.add_argument("--use-logprobs", action="store_true",
                       help="read the verdict from the judge's top log-probabilities (verdict-only strategies)")
    g.add_argument("--judge-max-tokens", type=int, default=None,
                   help="cap on each judge reply (default 32 for verdict-only replies, 512 with cot/swap and grading)")
    g.add_argument("--aux-max-tokens", type=int, default=256, help="cap on generated metrics / reference answers")
    g.add_argument("--judge-temperature", type=float, default=0.0)
    g.add_argument("--judge-seed", type=int, default=None)
    g.add_argument("--parse-retries", type=int, default=0, help="re-ask a judge whose reply cannot be parsed")
    g.add_argument("--judge-batch-size", type=int, default=16, help="judge prompts per backend call")
    g.add_argument("--cache", default=None, help="SQLite judge cache (default: OUT/judge_cache.sqlite)")
    g.add_argument("--judge-base-url", default=None, help="base URL for 'openai:<model>' specs without '@<url>'")
    g.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--judge-concurrency", type=int, default=8, help="HTTP requests in flight at once")
    g.add_argument("--judge-timeout", type=float, default=60.0, help="seconds per HTTP request")
    g.add_argument("--judge-retries", type=int, default=5, help="retries on 429, 5xx, timeouts")
    g.add_argument("--judge-dtype", default="fp32", choices=["fp32", "bf16"], help="weights of a local judge")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _judge_options(a):
    from alignkit.evaluation.backends import BackendOptions
    from alignkit.evaluation.commands import JudgeOptions
    from alignkit.paths import check_output_file

    if a.cache:
        check_output_file(a.cache, "--cache")  # an SQLite file: a folder there would fail after the judge loads
    backend = BackendOptions(base_url=a.judge_base_url, api_key_env=a.judge_api_key_env,
                             max_concurrency=a.judge_concurrency, timeout=a.judge_timeout,
                             max_retries=a.judge_retries, dtype=a.judge_dtype, batch_size=a.judge_batch_size)
    return JudgeOptions(spec=a.judge, strategy=getattr(a, "strategy", "plain"), max_tokens=a.judge_max_tokens,
                        aux_max_tokens=a.aux_max_tokens, temperature=a.judge_temperature, seed=a.judge_seed,
                        both_orders=not getattr(a, "single_order", False), allow_tie=getattr(a, "allow_tie", False),
                        parse_retries=a.parse_retries, use_logprobs=getattr(a, "use_logprobs", False),
                        batch_size=a.judge_batch_size, cache=a.cache, progress=not a.no_progress, backend=backend)


def cmd_eval_pairwise(a) -> None:
    from alignkit.evaluation.commands import eval_pairwise
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")  # before the judge loads and every pair is judged
    eval_pairwise(a.outputs, a.reference, a.out, _judge_options(a), model=a.model_name,
                  reference_model=a.reference_name, limit=a.limit, report=a.report)


def cmd_eval_grade(a) -> None:
    from alignkit.evaluation.commands import eval_grade
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")  # before the judge loads and every answer is graded
    try:
        turns = [int(t) for t in a.turns.split(",")] if a.turns else None
    except ValueError:
        raise ValueError(f"--turns must be comma-separated turn numbers such as 1 or 1,2; got {a.turns!r}") from None
    eval_grade(a.out, _judge_options(a), questions=a.questions, answers=a.answers, items=a.items, rubric=a.rubric,
               turns=turns, model=a.model_name, limit=a.limit, use_reference=not a.no_reference, report=a.report)


def cmd_leaderboard(a) -> None:
    from alignkit.evaluation.commands import leaderboard
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")  # before the judge loads and every battle is judged
    leaderboard(a.out, battles=a.battles, outputs=a.outputs or (), judge=_judge_options(a), limit=a.limit,
                anchor=a.anchor, n_bootstrap=a.bootstrap, seed=a.seed, report=a.report)


def cmd_meta_eval(a) -> None:
    from alignkit.evaluation.commands import run_meta_eval
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")  # before the judge loads and every pair is judged
    strategies = [s for s in a.strategies.split(",") if s.strip()] if a.strategies else []
    judge = _judge_options(a) if strategies else None
    run_meta_eval(a.pairs, a.out, judge, strategies=strategies, predictions=a.predictions or (), limit=a.limit,
                  report=a.report)


def cmd_report(a) -> None:
    from alignkit.evaluation.commands import build_report
    from alignkit.paths import check_output_dir

    check_output_dir(a.out, "--out")
    build_report(a.results, a.out, a.title)


def cmd_serve(a) -> None:
    from alignkit.evaluation.backends import BackendOptions
    from alignkit.evaluation.commands import serve_model
    from alignkit.serving.app import api_key_from_env, check_exposure, check_request_limits

    # Checked before loading the model, which can take minutes.
    api_key = api_key_from_env(a.api_key_env)
    check_exposure(a.host, api_key, a.insecure_no_api_key)
    check_request_limits(a.default_max_tokens, a.max_completions_per_request, a.max_tokens_cap)
    serve_model(a.model, host=a.host, port=a.port, name=a.name,
                options=BackendOptions(dtype=a.dtype, batch_size=a.batch_size, device=a.device),
                default_max_tokens=a.default_max_tokens, api_key=api_key,
                insecure_no_api_key=a.insecure_no_api_key,
                max_completions_per_request=a.max_completions_per_request, max_tokens_cap=a.max_tokens_cap)


def add_evaluation_commands(sub, ev) -> None:
    """`eval pairwise`, `eval grade`, `leaderboard`, `meta-eval`, `report` and `serve`."""
    p = ev.add_parser("pairwise", help="win rate of a model's outputs against a reference's, judged pairwise")
    p.add_argument("--outputs", required=True, help="model outputs JSONL: {prompt|instruction, response|output, id?}")
    p.add_argument("--reference", required=True, help="reference outputs JSONL, same items (matched by id or prompt)")
    p.add_argument("--out", default="runs/eval-pairwise", help="run folder: results.json, judgments.jsonl, cache")
    p.add_argument("--model-name", help="default: the records' model field or the file name")
    p.add_argument("--reference-name")
    p.add_argument("--limit", type=int, default=0, help="judge only the first N items (0: all)")
    p.add_argument("--report", action="store_true", help="also write report.html and report.json")
    _judge_args(p)
    p.set_defaults(func=cmd_eval_pairwise)

    p = ev.add_parser("grade", help="single-answer grading 1-10 per category (MT-Bench), or rubric grading 1-5")
    p.add_argument("--questions", help="MT-Bench style question.jsonl")
    p.add_argument("--answers", help="JSONL {question_id, turns} or FastChat {question_id, choices: [{turns}]}")
    p.add_argument("--rubric", help="rubric mode: a text file with the rubric (turn 1 of each question, or --items)")
    p.add_argument("--items", help="rubric mode: JSONL {id, instruction, response, rubric?, reference?, category?}")
    p.add_argument("--turns", help="comma-separated turns to grade, e.g. 1 or 1,2 (default: all)")
    p.add_argument("--no-reference", action="store_true", help="do not show the judge reference answers")
    p.add_argument("--model-name", help="default: the answers file name")
    p.add_argument("--out", default="runs/eval-grade")
    p.add_argument("--limit", type=int, default=0, help="grade only the first N questions/items (0: all)")
    p.add_argument("--report", action="store_true", help="also write report.html and report.json")
    _judge_args(p, strategy=False)
    p.set_defaults(func=cmd_eval_grade)

    p = sub.add_parser("leaderboard", help="Bradley-Terry ratings with bootstrap CIs from battles, or by judging "
                                           "several models' outputs pairwise")
    p.add_argument("--battles", help="JSONL {model_a, model_b, winner: a|b|tie} (e.g. battles.jsonl of eval pairwise)")
    p.add_argument("--outputs", nargs="+", help="two or more model output files answering the same items")
    p.add_argument("--anchor", help="model pinned at rating 1000 (default: alphabetically first)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="with --outputs: judge only the first N items (0: all)")
    p.add_argument("--out", default="runs/leaderboard")
    p.add_argument("--report", action="store_true", help="also write report.html and report.json")
    _judge_args(p)
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("meta-eval", help="how good is a judge: accuracy on gold-labelled pairs (LLMBar format) per "
                                         "order, positional agreement and failure rate, per strategy and file")
    p.add_argument("--pairs", nargs="+", required=True, help="LLMBar JSON files (input, output_1, output_2, label)")
    p.add_argument("--strategies", default=None,
                   help="comma-separated judge strategies, e.g. plain,rules,cot,metrics,reference,swap,rules+metrics")
    p.add_argument("--predictions", nargs="+", help="verdict files produced elsewhere: JSONL {id, order?, verdict}")
    p.add_argument("--limit", type=int, default=0, help="the first N pairs of each file (0: all)")
    p.add_argument("--out", default="runs/meta-eval")
    p.add_argument("--report", action="store_true", help="also write report.html and report.json")
    _judge_args(p, strategy=False)
    p.add_argument("--single-order", action="store_true", help="judge ab only (default: both orders)")
    p.add_argument("--allow-tie", action="store_true", help="offer the judge 'Verdict: tie' (counts as wrong)")
    p.add_argument("--use-logprobs", action="store_true", help="verdict from top log-probabilities")
    p.set_defaults(func=cmd_meta_eval)

    p = sub.add_parser("report", help="one self-contained HTML report (+ JSON) from results files")
    p.add_argument("--results", nargs="+", required=True,
                   help="results.json of eval/leaderboard/meta-eval runs, report.json files, or eval ifeval --out files")
    p.add_argument("--out", required=True, help="folder for report.html and report.json")
    p.add_argument("--title", default=None)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="serve a local model as an OpenAI-compatible API (/v1/chat/completions, "
                                     "/v1/completions, /v1/models)")
    p.add_argument("--model", default="embedded", help="embedded, a model folder, a .gguf file or a hub id")
    p.add_argument("--name", help="model name clients send (default: the --model value)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; any but loopback needs an API key or --insecure-no-api-key")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", default="ALIGNKIT_API_KEY",
                   help="environment variable holding the key clients must send as 'Authorization: Bearer <key>' "
                        "(unset: no key; never a command-line flag, so it stays out of ps and shell history)")
    p.add_argument("--insecure-no-api-key", action="store_true",
                   help="serve a non-loopback --host without a key: anyone who can reach the port can use the model")
    p.add_argument("--max-completions-per-request", type=int, default=64,
                   help="largest n x number of prompts one request may ask for (larger: 400)")
    p.add_argument("--max-tokens-cap", type=int, default=4096,
                   help="largest max_tokens / max_completion_tokens one request may ask for (larger: 400)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (requests are merged)")
    p.add_argument("--default-max-tokens", type=int, default=512, help="when a request sets no max_tokens")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default=None, help="e.g. cuda; default: where the model loads")
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sft", help="supervised fine-tuning from a YAML config")
    p.add_argument("--config", help="YAML file (sections model, data, train)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4 model.lora.enabled=true")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("generate", help="answer a file of prompts (JSONL/JSON/Parquet/CSV) into a JSONL file")
    p.add_argument("--model", default="embedded")
    p.add_argument("--chat-template", default="", help=CHAT_TEMPLATE_HELP)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    _sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk to a model in the terminal")
    p.add_argument("--model", default="embedded")
    p.add_argument("--chat-template", default="", help=CHAT_TEMPLATE_HELP)
    p.add_argument("--system", default=None)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    _sampling_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("prepare", help="convert the embedded model to safetensors in the cache (done once)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo", help="the pipeline demo on the embedded model")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--sft-steps", type=int, default=120)
    p.add_argument("--dpo-steps", type=int, default=30)
    p.add_argument("--heldout-limit", type=int, default=0, help="answer only the first N held-out prompts (0: all)")
    p.add_argument("--judge-pairs", type=int, default=24, help="held-out prompts judged pairwise per stage")
    p.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="evaluate models").add_subparsers(dest="eval_command", required=True)
    p = ev.add_parser("ifeval", help="verifiable instruction following (IFEval prompt set)")
    p.add_argument("--prompts", required=True, help="IFEval input_data.jsonl")
    p.add_argument("--responses", help="JSONL of {prompt, response}; omit to generate with --model")
    p.add_argument("--model", default="embedded")
    p.add_argument("--chat-template", default="", help=CHAT_TEMPLATE_HELP)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--out", help="write every number as JSON here")
    _sampling_args(p)
    p.set_defaults(func=cmd_eval_ifeval)
    add_evaluation_commands(sub, ev)

    add_preference_commands(sub)
    return parser


def _trains(args) -> bool:
    """sft, pref (and its shorthands) and rm: the commands that train as one run under torchrun."""
    from alignkit.training.preference import SHORTHANDS

    return args.command in ("sft", "pref", "rm", *SHORTHANDS)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from alignkit.errors import is_user_error
    from alignkit.training.distributed import PeerFailed, launched, process_group

    trains = _trains(args)
    # Each rank reports its own error: the launcher stops the others as soon as one exits, so a rank
    # that stayed silent could end rank 0 before it printed. The rank tells the duplicate lines apart.
    rank = os.environ.get("RANK", "0").strip() if trains else "0"
    where = f" (rank {rank})" if rank not in ("", "0") else ""
    try:
        if not trains and launched():
            # Every copy would do the whole work and write the same files.
            raise ValueError(f"`alignkit {args.command}` runs as one process; under torchrun or accelerate "
                             "launch only the training commands (sft, pref and its shorthands, rm) run")
        with process_group(trains):
            args.func(args)
    except PeerFailed as e:
        print(f"alignkit {args.command}: error{where}: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get("ALIGNKIT_DEBUG") or not is_user_error(e):
            raise
        print(f"alignkit {args.command}: error{where}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
