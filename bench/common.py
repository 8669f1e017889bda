"""What the side-by-side benches share: each trainer runs in a child process of its own, so the
peak RSS it reports is its own; the demo's format-task prompts; and a way to make every
generation run to its token limit, so two samplers do the same amount of work."""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMAT_TASK = ROOT / "alignkit" / "demo" / "data" / "sft_train.jsonl"


def child(a, runners: dict) -> None:
    """Run `runners[a.run](a)` and print its result with this process's peak RSS on a RESULT line."""
    import torch

    torch.set_num_threads(a.threads)
    out = runners[a.run](a)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


def run_child(cmd: list[str], label: str) -> dict:
    """Run one child process to the end; its RESULT as a dict, or exit showing the tail of its output."""
    print(f"running {label} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    lines = [row for row in proc.stdout.splitlines() if row.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{label} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def save_results(path: str | None, results: dict) -> None:
    """Write the results as JSON to `path`, when one was given (--json)."""
    if path:
        from alignkit.atomic_write import write_json_atomic

        write_json_atomic(path, results, allow_nan=True)


def format_prompts(count: int) -> list[dict]:
    """The first `count` records of the demo's format task, in file order, as {"messages": the turns
    before the answer, "format": the format asked for}."""
    rows = [json.loads(line) for line in open(FORMAT_TASK, encoding="utf-8")]
    if len(rows) < count:
        sys.exit(f"only {len(rows)} prompts in {FORMAT_TASK}; ask for fewer")
    return [{"messages": r["messages"][:-1], "format": r["format"]} for r in rows[:count]]


def run_to_max_tokens(model) -> None:
    """Make every later `model.generate` call produce exactly max_new_tokens per row.

    min_new_tokens masks the EOS logits until the limit, so each row does the same work whatever it
    samples; TRL gets the same through its generation_kwargs."""
    original = model.generate

    def generate(*args, **kwargs):
        return original(*args, **{**kwargs, "min_new_tokens": kwargs["max_new_tokens"]})

    model.generate = generate


def add_grpo_options(p, *, steps: int, warmup: int, prompts: int, lr: float, parts, tmp: str) -> None:
    """The options the GRPO benches share: run size, learning rate, threads, and the hidden ones a parent
    passes to the child process it starts for each part (`parts`)."""
    p.add_argument("--steps", type=int, default=steps, help="timed optimizer steps (one rollout each)")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps before them")
    p.add_argument("--prompts", type=int, default=prompts, help="prompts per step")
    p.add_argument("--group", type=int, default=4, help="completions per prompt (TRL's num_generations)")
    p.add_argument("--max-tokens", type=int, default=64, help="completion length limit")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--run", choices=parts, help=argparse.SUPPRESS)
    p.add_argument("--prompts-path", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default=tmp, help="scratch folder")
    p.add_argument("--json", help="also write the results here")
