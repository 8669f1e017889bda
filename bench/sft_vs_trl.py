"""SFT speed: alignkit against TRL's SFTTrainer on the same model, data, batch size and steps.

Each trainer runs in its own subprocess (so peak RSS is its own); the parent prints a table of
non-padding tokens per second, peak RSS, first and final loss, and the alignkit/TRL ratios.
TRL gets its best settings on this machine: bf16, padding-free batches, completion-only loss.
Both read the examples in file order (no shuffling), so their loss curves are step for step comparable.

    python bench/sft_vs_trl.py --steps 30 --batch-size 8
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import child

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "alignkit" / "demo" / "data" / "sft_train.jsonl"


def rows():
    return [json.loads(line) for line in open(DATA)]


def run_alignkit(a) -> dict:
    from alignkit.data.formats import load_conversations
    from alignkit.data.sft import build_sft_examples
    from alignkit.models.loading import load_model
    from alignkit.training.config import TrainConfig
    from alignkit.training.loop import train
    from alignkit.training.sft import SFTObjective

    model, tok = load_model("embedded")
    cfg = TrainConfig(output_dir=a.tmp, max_steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=0,
                      schedule="constant", precision="bf16", resume="none", progress=False, seed=0,
                      max_grad_norm=1.0, shuffle=False)
    conversations, _ = load_conversations(str(DATA))
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
    # every demo example is shorter than max_length, so TRL (which refuses max_length when padding-free)
    # sees the same sequences as alignkit
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows()])
    args = SFTConfig(output_dir=a.tmp, max_steps=a.steps, per_device_train_batch_size=a.batch_size,
                     learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, bf16=True, use_cpu=True,
                     padding_free=True, completion_only_loss=True, max_length=None, logging_steps=1,
                     save_strategy="no", report_to=[], seed=0, data_seed=0, max_grad_norm=1.0,
                     dataloader_num_workers=0, disable_tqdm=True, train_sampling_strategy="sequential")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"tokens": int(logs[-1]["num_tokens"]), "seconds": seconds, "losses": [h["loss"] for h in logs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--repeats", type=int, default=1, help="alternate the two this many times; report the median")
    p.add_argument("--run", choices=["alignkit", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="/tmp/alignkit-bench", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    if a.run:
        return child(a, {"alignkit": run_alignkit, "trl": run_trl})
    runs: dict[str, list[dict]] = {"trl": [], "alignkit": []}
    # Alternating the two, run after run, spreads any background load evenly over both.
    for _ in range(a.repeats):
        for name in runs:
            cmd = [sys.executable, __file__, "--run", name, "--steps", str(a.steps), "--batch-size", str(a.batch_size),
                   "--lr", str(a.lr), "--max-length", str(a.max_length), "--threads", str(a.threads),
                   "--tmp", f"{a.tmp}-{name}"]
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{name} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            runs[name].append(json.loads(line[-1][7:]))
    results = {name: _median_run(rs) for name, rs in runs.items()}
    report(results, a)
    if a.json:
        from alignkit.atomic_write import write_json_atomic

        write_json_atomic(a.json, results, allow_nan=True)


def _median_run(rs: list[dict]) -> dict:
    """The run with the median speed (its losses and memory come with it), plus every run's speed."""
    ordered = sorted(rs, key=lambda r: r["tokens"] / r["seconds"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["all_tokens_per_s"] = [round(r["tokens"] / r["seconds"], 1) for r in rs]
    chosen["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
    return chosen


def report(results: dict, a) -> None:
    print(f"\nSFT, SmolLM2-135M, {a.steps} steps x batch {a.batch_size}, max_length {a.max_length}, "
          f"{a.threads} threads, bf16, median of {a.repeats} alternating run(s)")
    print(f"{'':<10}{'tokens/s':>10}{'peak RSS MB':>13}{'first loss':>12}{'final loss':>12}{'tokens':>9}")
    for name, r in results.items():
        tps = r["tokens"] / r["seconds"]
        tail = r["losses"][-5:]
        print(f"{name:<10}{tps:>10.1f}{r['peak_rss_mb']:>13.0f}{r['losses'][0]:>12.4f}{sum(tail) / len(tail):>12.4f}"
              f"{r['tokens']:>9}")
    ak, trl = results["alignkit"], results["trl"]
    for name, r in results.items():
        print(f"{name} tokens/s per run: {r['all_tokens_per_s']}")
    print(f"ratio alignkit/TRL: tokens/s {(ak['tokens'] / ak['seconds']) / (trl['tokens'] / trl['seconds']):.2f}x, "
          f"peak RSS {ak['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
