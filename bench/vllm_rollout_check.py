"""rollout.backend=vllm on a GPU: a few GRPO steps with vLLM rollouts against the same steps with the local
(transformers) sampler, and a check that vLLM samples with the trained weights after a push.

Needs a CUDA GPU and vLLM (0.10.2 or later: the rollout engine reports the log-probs of the distribution it
drew from, logprobs_mode=processed_logprobs). Each part runs in a child process of its own, so one's GPU
memory is not the next one's:

- `local` and `vllm`: GRPO on SmolLM2-135M-Instruct (the embedded model) on the demo's format-task prompts
  (the first prompts x (warmup + steps) records of alignkit/demo/data/sft_train.jsonl, as grpo_vs_trl.py
  reads them), reward = follows_format. Per step it prints the generation speed (completion tokens /
  seconds inside the sampler), the weight-sync seconds (vllm: the engine's start at the first rollout, a
  push of every weight at the later ones), the reward and `sampler_logprob_gap`: the largest |sampler
  log-prob - training forward's log-prob| over the rollout's tokens (vllm: vLLM's log-prob of each sampled
  token against the trained model's recompute; no top-k / top-p, so the two are the same distribution: a gap
  near 0 means generation and training agree);
- `push`: starts an engine from the model, checks its greedy output equals LocalBackend's on a few prompts,
  moves every weight (noise of --noise x each weight's std, as a large optimizer step would), pushes, and
  checks again against LocalBackend on the moved model; it fails unless the outputs agree both times and
  the push changed at least one of them (else the check proved nothing). Greedy ties between two kernels
  can break differently, hence --dtype float32 by default for this part.

    python bench/vllm_rollout_check.py --warmup 1 --steps 3 --prompts 8 --group 4 --max-tokens 64
    python bench/vllm_rollout_check.py --lora          # the policy with a LoRA adapter (pushed merged)

VLLM_ENABLE_V1_MULTIPROCESSING=0 is set for the children (the engine must run in the training process).
"""
from __future__ import annotations

import argparse
import os
import sys

from common import add_grpo_options, child, format_prompts, run_child
from grpo_vs_trl import prompts_file

PARTS = ("local", "vllm", "push")


def load_policy(dtype: str, lora: bool):
    """The embedded model on the GPU (with a LoRA adapter under `lora`), and its tokenizer."""
    import torch

    from alignkit.models.loading import load_model
    from alignkit.models.lora import LoraConfig, apply_lora

    model, tokenizer = load_model("embedded", dtype=dtype)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    if lora:
        model = apply_lora(model, LoraConfig(enabled=True, r=16, alpha=32))
    return model, tokenizer


def run_grpo(a) -> dict:
    from alignkit.data.readers import DataSpec
    from alignkit.models.lora import LoraConfig
    from alignkit.rewards.spec import RewardSpec
    from alignkit.rl.rollout import RolloutConfig
    from alignkit.rl.run import RLConfig, run_rl
    from alignkit.training.config import TrainConfig

    model, _ = load_policy("fp32", lora=False)  # run_rl puts the adapter on under --lora
    cfg = RLConfig(
        algo="grpo", scale="group", aggregation="token", eps_low=0.2, eps_high=0.2, kl_coef=0.0,
        prompts=[DataSpec(a.prompts_path)], rewards=[RewardSpec(kind="format")], samples_per_step=0,
        rollout=RolloutConfig(prompts_per_step=a.prompts, group_size=a.group, max_tokens=a.max_tokens,
                              temperature=1.0, grad_accum=1, gen_batch_size=a.prompts * a.group,
                              shuffle_prompts=False, backend=a.run, gpu_memory_utilization=a.gpu_memory),
        train=TrainConfig(output_dir=os.path.join(a.tmp, a.run), max_steps=a.warmup + a.steps, lr=a.lr,
                          schedule="constant", warmup_steps=0, precision=a.precision, resume="none",
                          if_exists="overwrite", progress=False, seed=0, max_grad_norm=1.0))
    cfg.model.lora = LoraConfig(enabled=a.lora, r=16, alpha=32)
    records = []
    run_rl(cfg, model=model, on_step=lambda step, record: records.append(dict(record)))
    keys = ("step", "gen_tokens_per_s", "gen_seconds", "weight_sync_seconds", "sampler_logprob_gap", "reward_mean",
            "completion_len_mean", "loss")
    return {"steps": [{k: r.get(k) for k in keys} for r in records]}


def greedy(backend_call, prompt_ids, max_tokens: int) -> list[list[int]]:
    from alignkit.generation.backend import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, return_tokens=True)
    return [outs[0].token_ids for outs in backend_call(prompt_ids, params)]


def run_push(a) -> dict:
    import torch

    from alignkit.data.chat import tokenize_prompt
    from alignkit.generation.local import LocalBackend
    from alignkit.rl.vllm_rollout import VLLMSampler

    model, tokenizer = load_policy("fp32" if a.dtype == "float32" else "bf16", lora=a.lora)
    messages = [r["messages"] for r in format_prompts(a.check_prompts)]
    prompt_ids = [tokenize_prompt(tokenizer, m) for m in messages]
    sampler = VLLMSampler(tokenizer, seed=0, gpu_memory_utilization=a.gpu_memory)

    def both(step: int) -> tuple[list, list]:
        engine = sampler.engine(step, model)
        local = LocalBackend(model, tokenizer, batch_size=len(messages))
        return (greedy(engine.complete_ids, prompt_ids, a.max_tokens),
                greedy(lambda ids, p: local.chat(messages, p), prompt_ids, a.max_tokens))

    vllm_start, local_start = both(0)
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:  # under LoRA the adapter alone, as training moves it
                scale = a.noise * (float(p.float().std()) if p.numel() > 1 and "lora_B" not in name else 1.0)
                p.add_(torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32).to(p.dtype) * scale)
    vllm_pushed, local_pushed = both(1)
    sampler.close()
    return {"start_equal": vllm_start == local_start, "pushed_equal": vllm_pushed == local_pushed,
            "changed": sum(x != y for x, y in zip(local_start, local_pushed)), "prompts": len(prompt_ids),
            "first_mismatch": first_mismatch(vllm_pushed, local_pushed) or first_mismatch(vllm_start, local_start)}


def first_mismatch(a: list[list[int]], b: list[list[int]]) -> dict | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            at = next((k for k, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
            return {"prompt": i, "token": at, "vllm": x[at:at + 8], "local": y[at:at + 8]}
    return None


def report(results: dict, a) -> int:
    print(f"\nGRPO, SmolLM2-135M{' + LoRA' if a.lora else ''}, {a.warmup} + {a.steps} steps x {a.prompts} prompts x "
          f"{a.group} completions, max {a.max_tokens} tokens, precision {a.precision}")
    print(f"{'step':>4} {'backend':<8}{'gen tok/s':>11}{'gen s':>8}{'sync s':>8}{'logprob gap':>13}{'reward':>8}"
          f"{'mean len':>10}")
    for name in ("local", "vllm"):
        for r in results[name]["steps"]:
            gap = r["sampler_logprob_gap"]
            print(f"{r['step']:>4} {name:<8}{r['gen_tokens_per_s']:>11.1f}{r['gen_seconds']:>8.2f}"
                  f"{(r['weight_sync_seconds'] or 0.0):>8.2f}{'-' if gap is None else f'{gap:.4f}':>13}"
                  f"{r['reward_mean']:>8.3f}{r['completion_len_mean']:>10.1f}")
    speed = {name: sum(r["gen_tokens_per_s"] for r in results[name]["steps"][a.warmup:]) / a.steps
             for name in ("local", "vllm")}
    print(f"generation tok/s over the last {a.steps} steps: vllm {speed['vllm']:.0f}, local {speed['local']:.0f}, "
          f"vllm / local = {speed['vllm'] / max(speed['local'], 1e-9):.1f}x")
    push = results["push"]
    print(f"\npush check ({push['prompts']} prompts, greedy, {a.max_tokens} tokens, {a.dtype}): equal at start "
          f"{push['start_equal']}, equal after the push {push['pushed_equal']}, outputs the push changed "
          f"{push['changed']}")
    failures = []
    if not (push["start_equal"] and push["pushed_equal"]):
        failures.append(f"vLLM's greedy output differs from LocalBackend's: {push['first_mismatch']}")
    if push["changed"] == 0:
        failures.append("the moved weights changed no greedy output: raise --noise, the push was not tested")
    for failure in failures:
        print("FAILED: " + failure)
    return 1 if failures else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grpo_options(p, steps=3, warmup=1, prompts=8, lr=1e-5, parts=PARTS, tmp="/tmp/alignkit-vllm-rollout-check")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="training precision (GRPO runs)")
    p.add_argument("--lora", action="store_true", help="train (and push) a LoRA policy")
    p.add_argument("--gpu-memory", type=float, default=0.3, help="rollout.gpu_memory_utilization")
    p.add_argument("--check-prompts", type=int, default=6, help="prompts of the push check")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="push check's weights")
    p.add_argument("--noise", type=float, default=0.05, help="push check: weight moves, x each weight's std")
    a = p.parse_args()
    if a.steps < 1 or a.warmup < 0:
        sys.exit("--steps must be at least 1 and --warmup at least 0")
    if a.run:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        return child(a, {"local": run_grpo, "vllm": run_grpo, "push": run_push})
    path = prompts_file(a)
    results = {}
    for part in PARTS:
        cmd = [sys.executable, __file__, "--run", part, "--prompts-path", path, *forwarded(a)]
        results[part] = run_child(cmd, part)
    code = report(results, a)
    if a.json:
        from alignkit.atomic_write import write_json_atomic

        write_json_atomic(a.json, {"settings": vars(a), **results}, allow_nan=True)
    sys.exit(code)


def forwarded(a) -> list[str]:
    """The settings a child needs, as arguments."""
    args = []
    for key in ("steps", "warmup", "prompts", "group", "max_tokens", "lr", "precision", "gpu_memory", "check_prompts",
                "dtype", "noise", "threads", "tmp"):
        args += [f"--{key.replace('_', '-')}", str(getattr(a, key))]
    return args + (["--lora"] if a.lora else [])


if __name__ == "__main__":
    main()
