"""`alignkit <command>`: a thin layer over the Python API. Each command parses its arguments,
calls one function, and turns the project's known errors into a one-line message and exit code 2."""
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


def _params(a):
    from alignkit.generation.backend import SamplingParams

    return SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
                          n=a.n, seed=a.seed, stop=tuple(a.stop))


def _local_backend(model: str, dtype: str, batch_size: int):
    from alignkit.generation.local import LocalBackend
    from alignkit.models.loading import load_model

    m, tok = load_model(model, dtype=dtype)
    return LocalBackend(m, tok, batch_size=batch_size, model_id=model or "embedded")


def cmd_sft(a) -> None:
    from alignkit.config import load_config
    from alignkit.training.sft import SFTConfig, run_sft

    cfg = load_config(SFTConfig, a.config, a.overrides)
    run_sft(cfg)
    print(f"saved to {os.path.join(cfg.train.output_dir, 'final')}")


def cmd_generate(a) -> None:
    from alignkit.generation.files import generate_file

    n = generate_file(_local_backend(a.model, a.dtype, a.batch_size), a.prompts, a.out, _params(a))
    print(f"wrote {n} responses to {a.out}")


def cmd_chat(a) -> None:
    from alignkit.generation.chat_repl import chat_loop

    chat_loop(_local_backend(a.model, a.dtype, 1), _params(a), system=a.system)


def cmd_prepare(a) -> None:
    from alignkit.models.loading import embedded_model_dir

    print(embedded_model_dir())


def cmd_demo(a) -> None:
    from alignkit.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out_dir=a.out, sft_steps=a.sft_steps, heldout_limit=a.heldout_limit))


def cmd_eval_ifeval(a) -> None:
    import json

    from alignkit.evaluation.ifeval import load_ifeval_prompts, read_responses, score_ifeval

    prompts = load_ifeval_prompts(a.prompts)
    if a.limit:
        prompts = prompts[: a.limit]
    if a.responses:
        responses = read_responses(a.responses)
    else:
        from alignkit.generation.local import generate_texts

        backend = _local_backend(a.model, a.dtype, a.batch_size)
        outs = generate_texts(backend, [[{"role": "user", "content": p.prompt}] for p in prompts], _params(a))
        responses = {p.prompt: o[0].text for p, o in zip(prompts, outs)}
    result = score_ifeval(prompts, responses)
    d = result.to_dict()
    print(json.dumps({k: d[k] for k in d if k.startswith(("prompt_level", "instruction_level"))}, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(d, f, indent=2)


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
    from alignkit.evaluation.reward_eval import score_file
    from alignkit.models.reward import load_reward_model

    model, tok = load_reward_model(a.model, dtype=a.dtype)
    written, cut = score_file(model, tok, a.input, a.out, batch_size=a.batch_size, max_length=a.max_length)
    note = f" ({cut} cut from the left to --max-length {a.max_length})" if cut else ""
    print(f"wrote {written} scored records to {a.out}{note}")


def cmd_rm_eval(a) -> None:
    from alignkit.evaluation.reward_eval import rm_eval, write_result
    from alignkit.models.reward import load_reward_model

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

    p = sub.add_parser("score", help="score responses in a file with a reward model (JSONL out, `reward` added)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sft", help="supervised fine-tuning from a YAML config")
    p.add_argument("--config", help="YAML file (sections model, data, train)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4 model.lora.enabled=true")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("generate", help="answer a file of prompts (JSONL/JSON/Parquet/CSV) into a JSONL file")
    p.add_argument("--model", default="embedded")
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    _sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk to a model in the terminal")
    p.add_argument("--model", default="embedded")
    p.add_argument("--system", default=None)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    _sampling_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("prepare", help="convert the embedded model to safetensors in the cache (done once)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo", help="the pipeline demo on the embedded model")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--sft-steps", type=int, default=120)
    p.add_argument("--heldout-limit", type=int, default=0, help="answer only the first N held-out prompts (0: all)")
    p.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="evaluate models").add_subparsers(dest="eval_command", required=True)
    p = ev.add_parser("ifeval", help="verifiable instruction following (IFEval prompt set)")
    p.add_argument("--prompts", required=True, help="IFEval input_data.jsonl")
    p.add_argument("--responses", help="JSONL of {prompt, response}; omit to generate with --model")
    p.add_argument("--model", default="embedded")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--out", help="write every number as JSON here")
    _sampling_args(p)
    p.set_defaults(func=cmd_eval_ifeval)

    add_preference_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from alignkit.errors import USER_ERRORS

    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"alignkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
