"""GRPO speed: alignkit's online GRPO against TRL 1.16's GRPOTrainer on the same model, prompts and steps.

Each framework runs in its own subprocess (so peak RSS is its own) and trains SmolLM2-135M-Instruct
(the embedded model) on the demo's format-task prompts, the first `--prompts` x steps records of
alignkit/demo/data/sft_train.jsonl in file order, `--prompts` per step, `--group` completions each,
one optimizer step per rollout (one micro-batch of prompts x group samples), reward =
alignkit.rewards.formats.follows_format on each record's `format` (given to TRL as its reward
function). Both: temperature 1, no top-k / top-p, constant lr, no warm-up, grad clip 1, clip range
0.2, group-scaled advantages, token-mean loss (TRL's dapo, alignkit's aggregation=token), beta /
kl_coef 0 (no reference model), bf16 (alignkit: bf16 weights with fp32 masters; TRL: bf16 autocast
over fp32 weights, its bf16=True), all of a step's samples generated in one batch.
TRL: use_cpu, no gradient checkpointing (its GRPO default; alignkit does none), no dataset shuffle.

Completion length (`--until`): `full` (the default) masks EOS until `--max-tokens` (min_new_tokens:
TRL's generation_kwargs, alignkit by wrapping model.generate), so every step generates and trains on
exactly prompts x group x max_tokens completion tokens in both and the work is identical whatever
they sample; `eos` lets rows stop at EOS, as real runs do (lengths then differ by chance).

The first `--warmup` steps are run but not timed (first-call allocations, lazy initialisation); the
timed window runs from the end of the last warm-up step to the end of the last step, the same
callback point in both (alignkit's on_step, TRL's on_step_end). Measured over it:
- tok/s:      completion tokens / wall time, generation and update together;
- gen tok/s:  completion tokens / time inside generation (alignkit: the rollout's gen_seconds, its
              LocalBackend.chat call; TRL: its _generate, which likewise tokenizes, generates, decodes);
- logp s:     time recomputing the old log-probs before training (both skip it when, as here, each
              rollout feeds exactly one optimizer step);
- peak RSS of the process.

    python bench/grpo_vs_trl.py --steps 5 --warmup 1 --prompts 4 --group 4 --max-tokens 64
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import add_grpo_options, child, format_prompts, run_child, run_to_max_tokens, save_results

NAMES = ("trl", "alignkit")


def prompts_file(a) -> str:
    """The prompts both read: (warmup + steps) x prompts records of the demo's format task, in order."""
    rows = format_prompts((a.warmup + a.steps) * a.prompts)
    path = Path(a.tmp) / "prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def run_alignkit(a) -> dict:
    from alignkit.data.readers import DataSpec
    from alignkit.models.loading import load_model
    from alignkit.rewards.spec import RewardSpec
    from alignkit.rl.rollout import RolloutConfig
    from alignkit.rl.run import RLConfig, run_rl
    from alignkit.training.config import TrainConfig

    group = a.prompts * a.group
    cfg = RLConfig(
        algo="grpo", scale="group", aggregation="token", eps_low=0.2, eps_high=0.2, kl_coef=0.0,
        prompts=[DataSpec(a.prompts_path)], rewards=[RewardSpec(kind="format")], samples_per_step=0,
        rollout=RolloutConfig(prompts_per_step=a.prompts, group_size=a.group, max_tokens=a.max_tokens,
                              temperature=1.0, grad_accum=1, gen_batch_size=group, shuffle_prompts=False),
        train=TrainConfig(output_dir=os.path.join(a.tmp, "run"), max_steps=a.warmup + a.steps, lr=a.lr,
                          schedule="constant", warmup_steps=0, precision="bf16", resume="none",
                          if_exists="overwrite", progress=False, seed=0, max_grad_norm=1.0))
    model, _ = load_model("embedded")
    if a.until == "full":
        run_to_max_tokens(model)
    marks: list[tuple[float, dict]] = []
    run_rl(cfg, model=model, on_step=lambda step, record: marks.append((time.perf_counter(), dict(record))))
    timed = [record for _, record in marks[a.warmup:]]
    return {"seconds": marks[-1][0] - marks[a.warmup - 1][0],
            "tokens": sum(round(r["completion_len_mean"] * r["samples"]) for r in timed),
            "gen_seconds": sum(r["gen_seconds"] for r in timed),
            "logprob_seconds": sum(r["logprob_seconds"] for r in timed),
            "rewards": [r["reward_mean"] for _, r in marks], "losses": [r["loss"] for _, r in marks],
            "mean_lengths": [r["completion_len_mean"] for _, r in marks]}


def run_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignkit.models.loading import embedded_model_dir
    from alignkit.rewards.formats import follows_format

    def format_reward(completions, format, **kwargs):
        return [float(follows_format(f, c[0]["content"])) for f, c in zip(format, completions, strict=True)]

    path = embedded_model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    rows = [json.loads(line) for line in open(a.prompts_path, encoding="utf-8")]
    data = Dataset.from_list([{"prompt": r["messages"], "format": r["format"]} for r in rows])
    args = GRPOConfig(
        output_dir=os.path.join(a.tmp, "run"), max_steps=a.warmup + a.steps, learning_rate=a.lr,
        per_device_train_batch_size=a.prompts * a.group, gradient_accumulation_steps=1, num_generations=a.group,
        max_completion_length=a.max_tokens, temperature=1.0, top_p=1.0, top_k=0, num_iterations=1,
        beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group", shuffle_dataset=False,
        generation_kwargs={"min_new_tokens": a.max_tokens} if a.until == "full" else None,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, bf16=True, use_cpu=True,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[], seed=0, data_seed=0,
        dataloader_num_workers=0, disable_tqdm=True, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=format_reward, args=args, train_dataset=data,
                          processing_class=tok)
    generations = _time_generation(trainer)
    marks: list[float] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    trainer.add_callback(Marks())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    timed = generations[a.warmup:]
    return {"seconds": marks[-1] - marks[a.warmup - 1],
            "tokens": sum(tokens for tokens, _ in timed), "gen_seconds": sum(s for _, s in timed),
            "logprob_seconds": 0.0, "rewards": [h["reward"] for h in logs], "losses": [h["loss"] for h in logs],
            "mean_lengths": [h["completions/mean_length"] for h in logs]}


def _time_generation(trainer) -> list[tuple[int, float]]:
    """Wrap TRL's _generate (tokenize, generate, decode: what alignkit's gen_seconds covers) to record
    (completion tokens, seconds) per call."""
    calls: list[tuple[int, float]] = []
    original = trainer._generate

    def generate(prompts):
        start = time.perf_counter()
        out = original(prompts)
        calls.append((sum(len(ids) for ids in out[1]), time.perf_counter() - start))
        return out

    trainer._generate = generate
    return calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grpo_options(p, steps=5, warmup=1, prompts=4, lr=1e-6, parts=NAMES, tmp="/tmp/alignkit-grpo-bench")
    p.add_argument("--until", choices=["full", "eos"], default="full", help="every completion runs to "
                   "max-tokens (EOS masked), or stops at EOS")
    a = p.parse_args()
    if a.warmup < 1:
        sys.exit("--warmup must be at least 1: the timed window starts at the end of a step")
    if a.run:
        return child(a, {"alignkit": run_alignkit, "trl": run_trl})
    path = prompts_file(a)
    results = {}
    for name in NAMES:
        cmd = [sys.executable, __file__, "--run", name, "--prompts-path", path, "--steps", str(a.steps),
               "--warmup", str(a.warmup), "--prompts", str(a.prompts), "--group", str(a.group),
               "--max-tokens", str(a.max_tokens), "--until", a.until, "--lr", str(a.lr),
               "--threads", str(a.threads), "--tmp", os.path.join(a.tmp, name)]
        results[name] = run_child(cmd, name)
    report(results, a)
    save_results(a.json, {"settings": vars(a), **results})


COLUMNS = (("tok/s", 9, ".1f"), ("gen tok/s", 11, ".1f"), ("step s", 8, ".2f"), ("gen s", 8, ".2f"),
           ("logp s", 8, ".2f"), ("other s", 9, ".2f"), ("peak RSS MB", 13, ".0f"), ("tokens", 8, "d"),
           ("mean len", 10, ".1f"), ("reward", 8, ".3f"))


def figures(r: dict, a) -> dict:
    """One row of the table: speeds over the timed window, times per timed step, means over its steps."""
    lengths, rewards = r["mean_lengths"][a.warmup:], r["rewards"][a.warmup:]
    other = r["seconds"] - r["gen_seconds"] - r["logprob_seconds"]
    return {"tok/s": r["tokens"] / r["seconds"], "gen tok/s": r["tokens"] / r["gen_seconds"],
            "step s": r["seconds"] / a.steps, "gen s": r["gen_seconds"] / a.steps,
            "logp s": r["logprob_seconds"] / a.steps, "other s": other / a.steps, "peak RSS MB": r["peak_rss_mb"],
            "tokens": r["tokens"], "mean len": sum(lengths) / len(lengths), "reward": sum(rewards) / len(rewards)}


def report(results: dict, a) -> None:
    print(f"\nGRPO, SmolLM2-135M, {a.steps} timed steps (+{a.warmup} warm-up) x {a.prompts} prompts x "
          f"{a.group} completions, max {a.max_tokens} tokens ({a.until}), {a.threads} threads, bf16, beta 0")
    print(" " * 10 + "".join(f"{title:>{width}}" for title, width, _ in COLUMNS))
    rows = {name: figures(r, a) for name, r in results.items()}
    for name, row in rows.items():
        print(f"{name:<10}" + "".join(f"{row[title]:>{width}{spec}}" for title, width, spec in COLUMNS))
    print("(step s, gen s, logp s, other s: per timed step; other = the update, scoring and bookkeeping)")
    ak, trl = rows["alignkit"], rows["trl"]
    print(f"ratios alignkit / TRL (above 1 favours alignkit, RSS below 1): tok/s {ak['tok/s'] / trl['tok/s']:.2f}x, "
          f"gen tok/s {ak['gen tok/s'] / trl['gen tok/s']:.2f}x, "
          f"peak RSS {ak['peak RSS MB'] / trl['peak RSS MB']:.2f}x, same tokens: {ak['tokens'] == trl['tokens']}")


if __name__ == "__main__":
    main()
