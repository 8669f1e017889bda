"""SFT speed: alignkit against TRL's SFTTrainer on the same model, data, batch size and steps.

Each run is its own subprocess (so peak RSS is its own); the parent prints non-padding tokens per
second, peak RSS, first and final loss, and alignkit's best run against TRL's best. Every framework
runs in each precision asked for (`--runs`), so "TRL's best" is its best setting on this machine:
on CPUs without AMX, fp32 matrix products are faster than bf16 ones. TRL always gets padding-free
batches and completion-only loss; a `:nogc` run switches off the gradient checkpointing TRL turns on
by default (faster, at more memory). Both read the examples in file order (no shuffling), so their
loss curves are step for step comparable.

The data (`--data docs`, the default) is questions about Python's standard library answered by its
docstrings (bench/instruction_data.py; about 250 tokens a conversation), kept to those within
--max-length so neither side truncates; `--data demo` takes the demo's short format-task examples.

    python bench/sft_vs_trl.py --steps 20 --batch-size 4 --max-length 512
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import child, run_child, save_results

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "alignkit" / "demo" / "data" / "sft_train.jsonl"
RUNS = ("trl:bf16", "trl:fp32", "trl:bf16:nogc", "trl:fp32:nogc", "alignkit:bf16", "alignkit:fp32")


def write_data(a) -> str:
    """The run's examples, steps x batch of them, as a messages JSONL file in the scratch folder."""
    from instruction_data import sft_rows, within_length

    need = a.steps * a.batch_size
    if a.data == "demo":
        rows = [json.loads(line) for line in open(DEMO)]
    else:
        rows = within_length(sft_rows(min(2 * need, 1100)), a.max_length)
    if len(rows) < need:
        sys.exit(f"only {len(rows)} examples; lower --steps or --batch-size")
    path = Path(a.tmp) / f"sft-{a.data}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:need]))
    return str(path)


def run_alignkit(a) -> dict:
    from alignkit.data.formats import load_conversations
    from alignkit.data.sft import build_sft_examples
    from alignkit.models.loading import load_model
    from alignkit.training.config import TrainConfig
    from alignkit.training.loop import train
    from alignkit.training.sft import SFTObjective

    model, tok = load_model("embedded")
    cfg = TrainConfig(output_dir=a.tmp, max_steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=0,
                      schedule="constant", precision=a.precision, resume="none", progress=False, seed=0,
                      max_grad_norm=1.0, shuffle=False)
    conversations, _ = load_conversations(a.data_path)
    examples, _ = build_sft_examples(conversations, tok, max_length=a.max_length)
    t = time.perf_counter()
    result = train(model, SFTObjective(), examples, cfg)
    seconds = time.perf_counter() - t
    return {"tokens": result.tokens, "seconds": seconds, "losses": [r["loss"] for r in result.history]}


def run_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from alignkit.models.loading import embedded_model_dir

    path = embedded_model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    rows = [json.loads(line) for line in open(a.data_path)]
    # every example is within max_length, so TRL (which refuses max_length when padding-free) sees the
    # same sequences as alignkit
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    args = SFTConfig(output_dir=a.tmp, max_steps=a.steps, per_device_train_batch_size=a.batch_size,
                     learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, bf16=a.precision == "bf16",
                     use_cpu=True, padding_free=True, completion_only_loss=True, max_length=None, logging_steps=1,
                     save_strategy="no", report_to=[], seed=0, data_seed=0, max_grad_norm=1.0,
                     gradient_checkpointing=not a.no_gc, dataloader_num_workers=0, disable_tqdm=True,
                     train_sampling_strategy="sequential")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"tokens": int(logs[-1]["num_tokens"]), "seconds": seconds, "losses": [h["loss"] for h in logs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--data", choices=["docs", "demo"], default="docs")
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS), help="framework:precision runs")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--repeats", type=int, default=1, help="alternate the runs this many times; report the median")
    p.add_argument("--run", choices=["alignkit", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=["bf16", "fp32"], help=argparse.SUPPRESS)
    p.add_argument("--data-path", help=argparse.SUPPRESS)
    p.add_argument("--no-gc", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="/tmp/alignkit-bench", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    if a.run:
        return child(a, {"alignkit": run_alignkit, "trl": run_trl})
    data_path = write_data(a)
    runs: dict[str, list[dict]] = {name: [] for name in a.runs}
    # Alternating the runs, one after the other, spreads any background load evenly over them.
    for _ in range(a.repeats):
        for name in runs:
            framework, precision, *flags = name.split(":")
            cmd = [sys.executable, __file__, "--run", framework, "--precision", precision, "--data-path", data_path,
                   *(["--no-gc"] if "nogc" in flags else []),
                   "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--lr", str(a.lr),
                   "--max-length", str(a.max_length), "--threads", str(a.threads), "--tmp", f"{a.tmp}-{framework}"]
            runs[name].append(run_child(cmd, name))
    results = {name: _median_run(rs) for name, rs in runs.items()}
    report(results, a)
    save_results(a.json, results)


def _median_run(rs: list[dict]) -> dict:
    """The run with the median speed (its losses and memory come with it), plus every run's speed."""
    ordered = sorted(rs, key=lambda r: r["tokens"] / r["seconds"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["tokens_per_s"] = chosen["tokens"] / chosen["seconds"]
    chosen["all_tokens_per_s"] = [round(r["tokens"] / r["seconds"], 1) for r in rs]
    chosen["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
    return chosen


def best(results: dict, framework: str) -> tuple[str, dict] | None:
    """The fastest of a framework's runs, as (name, result)."""
    own = [(n, r) for n, r in results.items() if n.startswith(framework + ":")]
    return max(own, key=lambda item: item[1]["tokens_per_s"]) if own else None


def report(results: dict, a) -> None:
    print(f"\nSFT, SmolLM2-135M, {a.data} data, {a.steps} steps x batch {a.batch_size}, max_length {a.max_length}, "
          f"{a.threads} threads, median of {a.repeats} alternating run(s)")
    print(f"{'':<15}{'tokens/s':>10}{'peak RSS MB':>13}{'first loss':>12}{'last-5 loss':>12}{'tokens':>9}  runs")
    for name, r in results.items():
        tail = r["losses"][-5:]
        print(f"{name:<15}{r['tokens_per_s']:>10.1f}{r['peak_rss_mb']:>13.0f}{r['losses'][0]:>12.4f}"
              f"{sum(tail) / len(tail):>12.4f}{r['tokens']:>9}  {r['all_tokens_per_s']}")
    ak, trl = best(results, "alignkit"), best(results, "trl")
    if ak and trl:
        print(f"best alignkit ({ak[0]}) / best TRL ({trl[0]}): tokens/s {ak[1]['tokens_per_s'] / trl[1]['tokens_per_s']:.2f}x, "
              f"peak RSS {ak[1]['peak_rss_mb'] / trl[1]['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
