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
        from alignkit.generation.files import generate_all

        backend = _local_backend(a.model, a.dtype, a.batch_size)
        outs = generate_all(backend, [[{"role": "user", "content": p.prompt}] for p in prompts], _params(a))
        responses = {p.prompt: o[0].text for p, o in zip(prompts, outs)}
    result = score_ifeval(prompts, responses)
    d = result.to_dict()
    print(json.dumps({k: d[k] for k in d if k.startswith(("prompt_level", "instruction_level"))}, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(d, f, indent=2)


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
