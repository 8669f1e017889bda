"""What the side-by-side benches share: each trainer runs in a child process of its own, so the
peak RSS it reports is its own; the demo's format-task prompts; and a way to make every
generation run to its token limit, so two samplers do the same amount of work; and `timed`, the
self-time accounting of patched calls the profiles use."""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def timed(patches: list[tuple[object, str, Callable[..., str] | str]]) -> Iterator[tuple[dict, dict]]:
    """Wrap `owner.name` for each patch so its self time (its wall time less that of the wrapped calls
    it makes) adds to the bucket `label`, or `label(*args, **kwargs)`; yields (seconds, calls) per
    bucket, which therefore never overlap, and puts every original back after."""
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    nested = [0.0]  # per open wrapped call, the time spent in the wrapped calls it made
    saved = []
    for owner, name, label in patches:
        own = name in owner.__dict__
        saved.append((owner, name, own, owner.__dict__.get(name)))
        setattr(owner, name, _timer(getattr(owner, name), label, seconds, calls, nested))
    try:
        yield seconds, calls
    finally:
        for owner, name, own, original in reversed(saved):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)


def _timer(function, label, seconds: dict, calls: dict, nested: list[float]):
    # wraps keeps the signature visible: generate inspects forward's to decide on position_ids and
    # logits_to_keep, and a bare (*args, **kwargs) would change what it computes.
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        bucket = label(*args, **kwargs) if callable(label) else label
        nested.append(0.0)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            seconds[bucket] += elapsed - nested.pop()
            nested[-1] += elapsed
            calls[bucket] += 1
    return wrapper
