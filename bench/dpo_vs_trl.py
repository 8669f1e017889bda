"""DPO speed: alignkit against TRL 1.16's DPOTrainer on the same model, pairs, batch and steps.

Three settings, each framework in its own subprocess per setting (so peak RSS is its own):
- live:        the reference is a frozen full model run at every step (TRL's default);
- precomputed: reference log-probs computed once before training (alignkit's default; TRL's
               precompute_ref_log_probs=True); their computation counts in `setup s`;
- lora:        LoRA adapters (r=16 on every block linear), precomputed reference = adapter off.
Both train on the same pairs in file order, one epoch, beta 0.1, constant lr. Every framework runs in
each precision asked for (`--precisions`): on CPUs without AMX fp32 matrix products are faster than
bf16 ones, so TRL's best setting may be fp32. TRL gets its best CPU settings otherwise: autocast for
bf16 and its fused log-prob head; its padding-free mode is disabled for DPO in 1.16 (it warns and
pads), so it pads. Tokens are non-padding tokens of chosen + rejected sequences (prompt included in
each). TRL keeps the gradient checkpointing it turns on by default unless `--trl-gc off` (on this
machine, with its default on, TRL's SFT was faster and its DPO slower). tokens/s is over the training steps; `e2e tok/s` also counts setup (data, reference). Both
start at loss ln 2 (policy = reference) when their reference numbers agree with the policy's.
alignkit's precomputed run also reports its reference pass alone (`ref tok/s`: forward only, over
the sequences of the batches the run visits).

The pairs (`--data docs`, the default) are questions about Python's standard library, the asked-about
object's docstring chosen and another of similar length rejected (bench/instruction_data.py), kept to
pairs within --max-length; `--data demo` takes the demo's short preference pairs.

    python bench/dpo_vs_trl.py --steps 10 --batch-size 4 --max-length 512
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
DATA = ROOT / "alignkit" / "demo" / "data" / "pref_train.jsonl"
SETTINGS = ("live", "precomputed", "lora")
LORA = dict(r=16, alpha=32, dropout=0.0)


def pairs_file(a) -> str:
    """The first steps x batch pairs, so one epoch is exactly the run (TRL precomputes the whole set)."""
    need = a.steps * a.batch_size
    if a.data == "demo":
        rows = [json.loads(line) for line in open(DATA)]
    else:
        from instruction_data import pair_conversations, pref_rows, within_length

        rows = within_length(pref_rows(min(2 * need, 540)), a.max_length, pair_conversations)
    rows = rows[:need]
    if len(rows) < need:
        sys.exit(f"only {len(rows)} pairs; lower --steps or --batch-size")
    path = Path(a.tmp) / f"pairs-{a.data}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    return str(path)


def run_alignkit(a) -> dict:
    from alignkit.data.readers import DataSpec
    from alignkit.models.loading import load_model
    from alignkit.models.lora import LoraConfig, apply_lora
    from alignkit.training.config import TrainConfig
    from alignkit.training.loop import train
    from alignkit.training.pref_run import PrefDataConfig, load_pref_data
    from alignkit.training.preference import PairwiseObjective, PrefLossConfig
    from alignkit.training.reference import LiveReference, attach_reference

    model, tok = load_model("embedded")
    start = time.perf_counter()
    reference = {}
    if a.setting == "lora":
        model = apply_lora(model, LoraConfig(enabled=True, **LORA))
    data = PrefDataConfig(train=[DataSpec(a.pairs)], max_length=a.max_length)
    examples, _, _ = load_pref_data(data, tok, seed=0)
    live = None
    if a.setting == "live":
        live = LiveReference(model, a.precision)
    else:  # a fresh cache folder: the reference is computed here, not read from an earlier run
        ref = attach_reference(model, examples, model_id="embedded", template=tok.chat_template or "",
                               max_length=a.max_length, cache_dir=os.path.join(a.tmp, "refcache"),
                               precision=a.precision)
        reference = {"reference_seconds": ref.seconds,
                     "reference_tokens": sum(len(ids) for ex in examples for ids, _ in ex.sequences)}
    setup = time.perf_counter() - start
    cfg = TrainConfig(output_dir=os.path.join(a.tmp, "run"), max_steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                      schedule="constant", warmup_steps=0, precision=a.precision, resume="none", progress=False,
                      seed=0, max_grad_norm=1.0, shuffle=False)
    objective = PairwiseObjective(PrefLossConfig(loss="dpo", beta=0.1, reference="live" if live else "precomputed"),
                                  live)
    start = time.perf_counter()
    result = train(model, objective, examples, cfg)
    seconds = time.perf_counter() - start
    return {"tokens": result.tokens, "seconds": seconds, "setup_seconds": setup, **reference,
            "losses": [r["loss"] for r in result.history], "accuracy": [r["accuracy"] for r in result.history]}


def run_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from alignkit.models.loading import embedded_model_dir
    from alignkit.models.lora import find_target_modules

    path = embedded_model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    start = time.perf_counter()
    rows = [json.loads(line) for line in open(a.pairs)]
    # Conversational layout, so TRL renders the same chat template alignkit does.
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    peft_config = None
    if a.setting == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules=find_target_modules(model), task_type="CAUSAL_LM")
    args = DPOConfig(output_dir=os.path.join(a.tmp, "run"), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
                     learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, bf16=a.precision == "bf16",
                     use_cpu=True,
                     beta=0.1, loss_type=["sigmoid"], max_length=a.max_length,
                     precompute_ref_log_probs=a.setting != "live", precompute_ref_batch_size=a.batch_size,
                     gradient_checkpointing=a.trl_gc,
                     logging_steps=1, save_strategy="no", report_to=[], seed=0, data_seed=0, max_grad_norm=1.0,
                     dataloader_num_workers=0, disable_tqdm=True, train_sampling_strategy="sequential")
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"tokens": int(logs[-1]["num_tokens"]), "seconds": seconds, "setup_seconds": setup,
            "losses": [h["loss"] for h in logs], "accuracy": [h.get("rewards/accuracies") for h in logs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="optimizer steps (and steps x batch pairs of data)")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--data", choices=["docs", "demo"], default="docs")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--precisions", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    p.add_argument("--frameworks", nargs="+", choices=["trl", "alignkit"], default=["trl", "alignkit"])
    p.add_argument("--trl-gc", choices=["on", "off"], default="on", help="TRL's gradient checkpointing")
    p.add_argument("--run", choices=["alignkit", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--setting", choices=SETTINGS, help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=["bf16", "fp32"], help=argparse.SUPPRESS)
    p.add_argument("--pairs", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="/tmp/alignkit-dpo-bench", help="scratch folder")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    if a.run:
        a.trl_gc = a.trl_gc == "on"
        return child(a, {"alignkit": run_alignkit, "trl": run_trl})
    pairs = pairs_file(a)
    results: dict[str, dict] = {}
    for setting in a.settings:
        for precision in a.precisions:
            for name in a.frameworks:
                cmd = [sys.executable, __file__, "--run", name, "--setting", setting, "--precision", precision,
                       "--trl-gc", a.trl_gc,
                       "--pairs", pairs, "--steps", str(a.steps), "--batch-size", str(a.batch_size),
                       "--lr", str(a.lr), "--max-length", str(a.max_length), "--threads", str(a.threads),
                       "--tmp", os.path.join(a.tmp, f"{name}-{setting}-{precision}")]
                results[f"{setting}/{name}/{precision}"] = run_child(cmd, f"{name} / {setting} / {precision}")
    report(results, a)
    save_results(a.json, results)


def report(results: dict, a) -> None:
    print(f"\nDPO, SmolLM2-135M, {a.data} pairs, {a.steps} steps x {a.batch_size} pairs, max_length {a.max_length}, "
          f"{a.threads} threads")
    print(f"{'setting':<13}{'':<10}{'prec':<6}{'tokens/s':>10}{'e2e tok/s':>11}{'setup s':>9}{'ref tok/s':>10}"
          f"{'peak RSS MB':>13}{'first loss':>12}{'last-5 loss':>12}{'tokens':>9}")
    for key, r in results.items():
        setting, name, precision = key.split("/")
        tail = r["losses"][-5:]
        ref = f"{r['reference_tokens'] / r['reference_seconds']:.1f}" if r.get("reference_seconds") else "-"
        print(f"{setting:<13}{name:<10}{precision:<6}{r['tokens'] / r['seconds']:>10.1f}"
              f"{r['tokens'] / (r['seconds'] + r['setup_seconds']):>11.1f}{r['setup_seconds']:>9.1f}{ref:>10}"
              f"{r['peak_rss_mb']:>13.0f}{r['losses'][0]:>12.4f}{sum(tail) / len(tail):>12.4f}{r['tokens']:>9}")
    print("\nbest alignkit / best TRL per setting (tokens/s above 1 and RSS at most 1 favour alignkit):")
    speed = lambda r: r["tokens"] / r["seconds"]  # noqa: E731
    for setting in a.settings:
        ak = [(k, r) for k, r in results.items() if k.startswith(f"{setting}/alignkit/")]
        trl = [(k, r) for k, r in results.items() if k.startswith(f"{setting}/trl/")]
        if not (ak and trl):
            continue
        (ak_key, ak_r), (trl_key, trl_r) = max(ak, key=lambda x: speed(x[1])), max(trl, key=lambda x: speed(x[1]))
        line = (f"  {setting:<12} {ak_key.split('/')[2]} vs {trl_key.split('/')[2]}: tokens/s "
                f"{speed(ak_r) / speed(trl_r):.2f}x, peak RSS {ak_r['peak_rss_mb'] / trl_r['peak_rss_mb']:.2f}x, "
                f"final-step loss {ak_r['losses'][-1]:.4f} vs {trl_r['losses'][-1]:.4f}")
        if ak_r.get("reference_seconds"):
            line += (f"; alignkit's reference pass {ak_r['reference_tokens'] / ak_r['reference_seconds']:.1f} tok/s, "
                     f"{ak_r['reference_tokens'] / ak_r['reference_seconds'] / speed(ak_r):.2f}x its training")
        print(line)


if __name__ == "__main__":
    main()
