"""Commands that run a model over inputs: `generate` (answers to a prompts file), `chat` (a terminal
conversation) and `score` (reward-model scores for the responses in a file)."""
from __future__ import annotations

from alignkit.cli.local_model import CHAT_TEMPLATE_HELP, add_sampling_args, local_backend, sampling_params


def cmd_generate(a) -> None:
    from alignkit.generation.files import run_generate
    from alignkit.paths import check_output_file

    # Inputs and output are checked before the model loads, so a mistake costs no load or generation.
    check_output_file(a.out, "--out")
    n = run_generate(a.prompts, a.out, lambda: local_backend(a.model, a.dtype, a.batch_size, a.chat_template),
                     sampling_params(a), model_name=a.model)
    print(f"wrote {n} responses to {a.out}")


def cmd_chat(a) -> None:
    from alignkit.generation.chat_repl import chat_loop

    chat_loop(local_backend(a.model, a.dtype, 1, a.chat_template), sampling_params(a), system=a.system)


def cmd_score(a) -> None:
    from alignkit.evaluation.reward_eval import run_score
    from alignkit.paths import check_output_file

    check_output_file(a.out, "--out")  # before the model loads and every record is scored
    written, cut = run_score(a.model, a.input, a.out, dtype=a.dtype, batch_size=a.batch_size,
                             max_length=a.max_length)
    note = f" ({cut} cut from the left to --max-length {a.max_length})" if cut else ""
    print(f"wrote {written} scored records to {a.out}{note}")


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="answer a file of prompts (JSONL/JSON/Parquet/CSV) into a JSONL file")
    p.add_argument("--model", default="embedded")
    p.add_argument("--chat-template", default="", help=CHAT_TEMPLATE_HELP)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    add_sampling_args(p)
    p.set_defaults(func=cmd_generate)


def add_chat(sub) -> None:
    p = sub.add_parser("chat", help="talk to a model in the terminal")
    p.add_argument("--model", default="embedded")
    p.add_argument("--chat-template", default="", help=CHAT_TEMPLATE_HELP)
    p.add_argument("--system", default=None)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    add_sampling_args(p)
    p.set_defaults(func=cmd_chat)


def add_score(sub) -> None:
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
