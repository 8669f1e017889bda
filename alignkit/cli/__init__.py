"""`alignkit <command>`: a thin layer over the Python API. Each command parses its arguments,
calls one function, and turns the project's known errors into a one-line message and exit code 2
(set ALIGNKIT_DEBUG=1 for the traceback)."""
from __future__ import annotations

import argparse
import os
import sys

from alignkit.cli import annotate, data, demo, evaluate, generate, reward_sampling, rl, serve, train

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # The order of `alignkit --help`.
    train.add_sft(sub)
    generate.add_generate(sub)
    generate.add_chat(sub)
    demo.add_prepare(sub)
    demo.add_demo(sub)
    evaluate.add_eval(sub)
    evaluate.add_leaderboard(sub)
    evaluate.add_meta_eval(sub)
    evaluate.add_report(sub)
    serve.add_serve(sub)
    train.add_pref(sub)
    train.add_rm(sub)
    rl.add_rl(sub)
    reward_sampling.add_reward_sampling(sub)
    data.add_data(sub)
    annotate.add_annotate(sub)
    generate.add_score(sub)
    evaluate.add_rm_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from alignkit.errors import is_user_error
    from alignkit.training.distributed import PeerFailed, launched, process_group

    trains = train.trains(args.command)
    # `alignkit data label: error: ...`: a command with subcommands is named with the one that failed.
    name = " ".join(str(part) for part in (args.command, getattr(args, "data_command", None),
                                           getattr(args, "annotate_command", None)) if part)
    # Each rank reports its own error: the launcher stops the others as soon as one exits, so a rank
    # that stayed silent could end rank 0 before it printed. The rank tells the duplicate lines apart.
    rank = os.environ.get("RANK", "0").strip() if trains else "0"
    where = f" (rank {rank})" if rank not in ("", "0") else ""
    try:
        if not trains and launched():
            # Every copy would do the whole work and write the same files.
            raise ValueError(f"`alignkit {name}` runs as one process; under torchrun or accelerate launch only "
                             "the training commands (sft, pref and its shorthands, rm, rl and its presets) run")
        with process_group(trains):
            args.func(args)
    except PeerFailed as e:
        print(f"alignkit {name}: error{where}: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get("ALIGNKIT_DEBUG") or not is_user_error(e):
            raise
        print(f"alignkit {name}: error{where}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
