"""Long-sequence memory: peak RSS of `alignkit sft` at long sequences with the plain loss and the chunked one
(train.loss_chunk_size), each with and without activation checkpointing (train.activation_checkpointing).

Every setting runs the real command line (`python -m alignkit sft`) in a process of its own, on the embedded
model (SmolLM2-135M-Instruct, 49,152-token vocabulary), batch size 1, on the same examples in the same order:
multi-turn conversations about Python's standard library answered by its docstrings (bench/instruction_data.py),
each long enough to fill --max-length tokens (the command truncates it there). Its peak RSS is the child's own
(os.wait4's resource usage of that one process); losses per step and tokens/s come from the run's
metrics.jsonl and summary.json (tokens/s: the mean over the steps after the first). Printed per setting, with each chunked run's ratio to the plain run of the
same checkpointing, and the largest difference of its per-step losses from the plain run's.

    python bench/long_sequence_memory.py --max-length 4096 --steps 3 --chunks 1024 256
    python bench/long_sequence_memory.py --max-length 512 --steps 2 --chunks 128      # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import save_results

ROOT = Path(__file__).resolve().parents[1]


def write_data(path: Path, count: int, max_length: int) -> int:
    """`count` conversations of at least `max_length` tokens of the embedded model's chat template, each built
    from question/docstring turns until long enough; returns the shortest one's length in tokens."""
    from transformers import AutoTokenizer

    from alignkit.models.loading import embedded_model_dir
    from instruction_data import sft_rows

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    rows = iter(sft_rows(800, min_chars=400, max_chars=4000))  # about 300k tokens in all
    conversations, shortest = [], None
    for _ in range(count):
        messages: list[dict] = []
        length = 0
        while length < max_length:
            try:
                messages += next(rows)["messages"]
            except StopIteration:
                sys.exit("not enough docstrings for conversations this long; lower --max-length or --steps")
            length = len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        conversations.append({"messages": messages})
        shortest = length if shortest is None else min(shortest, length)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    return shortest


def settings(chunks: list[int]) -> list[tuple[str, int, bool]]:
    """(name, loss_chunk_size, activation_checkpointing) of every run: plain and each chunk size, without and
    with checkpointing."""
    out = []
    for checkpointing in (False, True):
        suffix = " + checkpointing" if checkpointing else ""
        out.append((f"plain{suffix}", 0, checkpointing))
        out += [(f"chunk {c}{suffix}", c, checkpointing) for c in chunks]
    return out


def run_setting(a, data: Path, name: str, chunk: int, checkpointing: bool) -> dict:
    """One `alignkit sft` process; its peak RSS (MB), per-step losses, tokens/s and wall time."""
    out = Path(a.tmp) / f"run-{chunk}-{int(checkpointing)}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "alignkit", "sft", "model.name=embedded", f"data.train=[{data}]",
           f"data.max_length={a.max_length}", "data.eval_fraction=0", f"train.output_dir={out}",
           f"train.max_steps={a.steps}", "train.batch_size=1", "train.grad_accum=1", "train.lr=1e-5",
           "train.warmup_steps=0", "train.schedule=constant", "train.shuffle=false", "train.progress=false",
           "train.resume=none", f"train.precision={a.precision}", f"train.threads={a.threads}",
           f"train.loss_chunk_size={chunk}", f"train.activation_checkpointing={str(checkpointing).lower()}"]
    print(f"running {name} ...", flush=True)
    log = Path(a.tmp) / f"run-{chunk}-{int(checkpointing)}.log"
    started = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage, its peak RSS among it
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records if "loss" in r and "eval_loss" not in r]
    summary = json.loads((out / "summary.json").read_text())
    # per-step speed past the first step, which also pays for warming up; the whole run's when there is one step
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r and "eval_loss" not in r][1:]
    shutil.rmtree(out / "final", ignore_errors=True)  # the weights are not needed, and take disk
    return {"name": name, "loss_chunk_size": chunk, "activation_checkpointing": checkpointing,
            "peak_rss_mb": usage.ru_maxrss / 1024, "losses": losses, "tokens_per_s": sum(rates) / len(rates) if rates else summary["tokens_per_s"],
            "tokens_per_step": summary["tokens"] / max(summary["steps"], 1), "seconds": seconds}


def report(results: list[dict]) -> None:
    plain = {r["activation_checkpointing"]: r for r in results if r["loss_chunk_size"] == 0}
    print(f"\n{'setting':<28} {'peak RSS':>10} {'vs plain':>9} {'tokens/s':>9} {'max |dloss|':>12}  losses per step")
    for r in results:
        base = plain[r["activation_checkpointing"]]
        ratio = r["peak_rss_mb"] / base["peak_rss_mb"]
        gap = max((abs(x - y) for x, y in zip(r["losses"], base["losses"])), default=float("nan"))
        r["rss_vs_plain"], r["max_loss_gap_vs_plain"] = ratio, gap
        losses = " ".join(f"{x:.4f}" for x in r["losses"])
        print(f"{r['name']:<28} {r['peak_rss_mb']:>7.0f} MB {ratio:>8.3f}x {r['tokens_per_s']:>9.1f} {gap:>12.2e}  "
              f"{losses}")
    best = min(results, key=lambda r: r["peak_rss_mb"])
    print(f"\ntokens per step: {results[0]['tokens_per_step']:.0f}; lowest peak RSS: {best['name']} "
          f"({best['peak_rss_mb']:.0f} MB, {best['peak_rss_mb'] / plain[False]['peak_rss_mb']:.3f}x plain without "
          "checkpointing)")
    for checkpointing, base in plain.items():
        chunked = [r for r in results if r["activation_checkpointing"] == checkpointing and r["loss_chunk_size"]]
        if chunked:
            low = min(chunked, key=lambda r: r["peak_rss_mb"])
            print(f"{'with' if checkpointing else 'without'} checkpointing: {low['name']} has "
                  f"{100 * (1 - low['rss_vs_plain']):.1f}% lower peak RSS than plain")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-length", type=int, default=4096, help="tokens per training sequence")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps, one sequence each")
    p.add_argument("--chunks", type=int, nargs="+", default=[1024, 256], help="loss_chunk_size values to run")
    p.add_argument("--no-checkpointing", action="store_true", help="skip the runs with activation checkpointing")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    p.add_argument("--tmp", default="/tmp/alignkit-bench-long", help="scratch folder")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    if any(c < 1 for c in a.chunks):
        p.error("--chunks must be positive (0 is the plain run, always included)")
    data = Path(a.tmp) / f"long-{a.max_length}.jsonl"
    shortest = write_data(data, a.steps, a.max_length)
    print(f"{a.steps} conversations of {shortest}+ tokens, trained on their first {a.max_length}", flush=True)
    runs = [s for s in settings(a.chunks) if not (a.no_checkpointing and s[2])]
    results = [run_setting(a, data, *s) for s in runs]
    report(results)
    save_results(a.json, {"max_length": a.max_length, "steps": a.steps, "results": results})


if __name__ == "__main__":
    main()
