"""The pipeline demo on the embedded model: SFT, then DPO and GRPO from the SFT model, then evaluation.

The demo teaches a verifiable behaviour (answer in the format the user asks for: a JSON object,
capital letters, or a fixed closing phrase) with the project's own instruction and preference
data, so each stage's figure is a measured fraction of held-out prompts, not an impression.

SFT is kept short on purpose: the behaviour is easy, and a long SFT leaves nothing for the later
stages to improve. The two preference stages start from the same SFT model, so they compare side by
side: DPO learns from fixed pairs, GRPO from its own samples scored by the format check (the same
check the held-out figure uses, on prompts it never sees there). The evaluation stage adds pairwise
judgments through the judge machinery and an HTML report with the training curves. Each stage also
answers a small balanced subset of the refusal prompt set (`alignkit eval refusal`), so the report
shows how training on format data moves the refusal and over-refusal rates.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from alignkit.atomic_write import write_json_atomic, write_jsonl_atomic
from alignkit.demo.heldout import DEMO_DATA, load_heldout, score


@dataclass
class DemoConfig:
    out_dir: str = "runs/demo"
    model: str = "embedded"
    sft_steps: int = 10
    batch_size: int = 8
    lr: float = 1e-4
    dpo_steps: int = 30
    dpo_lr: float = 5e-6
    dpo_beta: float = 0.1
    grpo_steps: int = 12
    grpo_lr: float = 5e-6
    grpo_prompts: int = 8  # prompts per rollout
    grpo_group: int = 4  # samples per prompt
    max_new_tokens: int = 48
    heldout_limit: int = 0
    judge_pairs: int = 24  # held-out prompts judged pairwise per stage (both orders)
    # refusal prompts answered per stage on each side (to refuse / to answer), round-robin over categories;
    # 12 + 12 short answers keep the four stages' share of the demo near a minute on two cores
    refusal_per_side: int = 12

    def validate(self, where: str = "") -> None:
        from alignkit.config import require_number

        for key in ("sft_steps", "dpo_steps", "batch_size", "max_new_tokens", "grpo_prompts", "grpo_group"):
            require_number(where, key, getattr(self, key), low=1, whole=True)
        for key in ("heldout_limit", "judge_pairs", "grpo_steps", "refusal_per_side"):
            require_number(where, key, getattr(self, key), low=0, whole=True)
        for key in ("lr", "dpo_lr", "dpo_beta", "grpo_lr"):
            require_number(where, key, getattr(self, key), low=0, low_open=True)


def answer(model, tokenizer, rows: list[dict], max_new_tokens: int, desc: str) -> list[str]:
    from alignkit.generation.backend import SamplingParams
    from alignkit.generation.local import generate_texts
    from alignkit.generation.local import LocalBackend

    backend = LocalBackend(model, tokenizer, batch_size=16)
    prompts = [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows]
    outs = generate_texts(backend, prompts, SamplingParams(max_tokens=max_new_tokens), desc=desc)
    return [o[0].text for o in outs]


def run_demo(cfg: DemoConfig) -> dict:
    from alignkit.config import validate_config
    from alignkit.data.readers import DataSpec
    from alignkit.demo.evaluation_stage import evaluate_stages
    from alignkit.evaluation.refusal import balanced_subset, load_refusal_prompts
    from alignkit.models.config import ModelConfig
    from alignkit.models.loading import load_model
    from alignkit.rewards.spec import RewardSpec
    from alignkit.rl.rollout import RolloutConfig
    from alignkit.rl.run import RLConfig, run_rl
    from alignkit.training.config import TrainConfig
    from alignkit.training.pref_run import PrefConfig, PrefDataConfig, run_pref
    from alignkit.training.sft import SFTConfig, SFTDataConfig, run_sft

    validate_config(cfg)  # before the model loads and the base model answers every prompt
    t0 = time.perf_counter()
    os.makedirs(cfg.out_dir, exist_ok=True)
    model, tok = load_model(cfg.model)
    rows = load_heldout(cfg.heldout_limit)
    refusal_prompts = balanced_subset(load_refusal_prompts(), cfg.refusal_per_side)
    refusal_rows = [{"messages": [{"role": "user", "content": p.prompt}]} for p in refusal_prompts]
    responses: dict[str, list[str]] = {}
    refusal_responses: dict[str, list[str]] = {}

    def answer_all(stage: str, desc: str) -> None:
        responses[stage] = answer(model, tok, rows, cfg.max_new_tokens, desc)
        if refusal_rows:
            refusal_responses[stage] = answer(model, tok, refusal_rows, cfg.max_new_tokens, f"{desc}, refusal set")

    print(f"[demo] {len(rows)} held-out prompts and {len(refusal_rows)} refusal prompts; answering with the base "
          "model", flush=True)
    answer_all("base", "base")

    print(f"[demo] SFT: {cfg.sft_steps} steps on {DEMO_DATA / 'sft_train.jsonl'}", flush=True)
    sft = run_sft(SFTConfig(
        model=ModelConfig(name=cfg.model),
        data=SFTDataConfig(train=[DataSpec(str(DEMO_DATA / "sft_train.jsonl"))], max_length=256),
        train=TrainConfig(output_dir=os.path.join(cfg.out_dir, "sft"), max_steps=cfg.sft_steps,
                          batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=10, precision="auto",
                          resume="none", if_exists="overwrite", seed=0)), model=model, tokenizer=tok)
    answer_all("sft", "after SFT")

    print(f"[demo] DPO: {cfg.dpo_steps} steps on {DEMO_DATA / 'pref_train.jsonl'}", flush=True)
    dpo = run_pref(PrefConfig(
        loss="dpo", beta=cfg.dpo_beta, model=ModelConfig(name=cfg.model),
        # only the pairs the steps will visit, so the reference pass computes nothing unused
        data=PrefDataConfig(train=[DataSpec(str(DEMO_DATA / "pref_train.jsonl"))], max_length=128,
                            mix_total=cfg.dpo_steps * cfg.batch_size),
        train=TrainConfig(output_dir=os.path.join(cfg.out_dir, "dpo"), max_steps=cfg.dpo_steps,
                          batch_size=cfg.batch_size, lr=cfg.dpo_lr, warmup_steps=5, precision="auto",
                          resume="none", if_exists="overwrite", seed=0)), model=model, tokenizer=tok)
    answer_all("dpo", "after DPO")
    trained = {"sft": sft, "dpo": dpo}

    if cfg.grpo_steps:
        sft_final = os.path.join(cfg.out_dir, "sft", "final")
        print(f"[demo] GRPO from the SFT model: {cfg.grpo_steps} steps of {cfg.grpo_prompts} prompts x "
              f"{cfg.grpo_group} samples, reward: the format check", flush=True)
        model, _ = load_model(sft_final)
        trained["grpo"] = run_rl(RLConfig(
            algo="grpo", model=ModelConfig(name=sft_final),
            prompts=[DataSpec(str(DEMO_DATA / "sft_train.jsonl"))], rewards=[RewardSpec(kind="format")],
            rollout=RolloutConfig(prompts_per_step=cfg.grpo_prompts, group_size=cfg.grpo_group,
                                  max_tokens=cfg.max_new_tokens, temperature=1.0, seed=0),
            train=TrainConfig(output_dir=os.path.join(cfg.out_dir, "grpo"), max_steps=cfg.grpo_steps,
                              # bf16 as measured against TRL: RL spends most of a step decoding a few rows at a
                              # time, where fp32 (auto on CPUs without AMX) has not been measured to be faster
                              lr=cfg.grpo_lr, warmup_steps=0, precision="bf16", resume="none",
                              if_exists="overwrite", seed=0),
            samples_per_step=2), model=model, tokenizer=tok)
        answer_all("grpo", "after GRPO")

    results = {stage: score(rows, resp) for stage, resp in responses.items()}
    results["training"] = {name: _summary(r) for name, r in trained.items()}
    write_jsonl_atomic(os.path.join(cfg.out_dir, "responses.jsonl"),
                       ({"prompt": row["messages"][0]["content"], "format": row["format"],
                         **{stage: resp[i] for stage, resp in responses.items()}} for i, row in enumerate(rows)))
    if refusal_rows:
        write_jsonl_atomic(os.path.join(cfg.out_dir, "refusal_responses.jsonl"),
                           ({"id": p.id, "category": p.category, "should_refuse": p.should_refuse, "prompt": p.prompt,
                             **{stage: resp[i] for stage, resp in refusal_responses.items()}}
                            for i, p in enumerate(refusal_prompts)))

    print("[demo] evaluation: verifiable checks, pairwise judgments against the base model, HTML report", flush=True)
    # the judge is the embedded model itself: near chance at 135M, but it exercises the whole machinery
    results["evaluation"] = evaluate_stages(responses, rows, None, os.path.join(cfg.out_dir, "evaluation"),
                                            max_pairs=cfg.judge_pairs, curves=training_curves(trained),
                                            refusal=(refusal_prompts, refusal_responses) if refusal_rows else None)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(os.path.join(cfg.out_dir, "results.json"), results, allow_nan=True)
    _print_table(results)
    return results


def _summary(result) -> dict:
    summary = {"steps": result.steps, "tokens": result.tokens, "seconds": round(result.seconds, 1),
               "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9), 1),
               "first_loss": result.history[0]["loss"], "final_loss": result.history[-1]["loss"]}
    if "reward_mean" in result.history[0]:
        summary.update(first_reward=result.history[0]["reward_mean"], final_reward=result.history[-1]["reward_mean"],
                       gen_tokens_per_s=round(sum(r["gen_tokens_per_s"] for r in result.history) / len(result.history), 1))
    return summary


def training_curves(trained: dict) -> list[dict]:
    """The report's curves: each stage's loss per step, and the reward of the RL stage's samples per step."""
    curves = [{"title": "Training loss per step", "x_label": "step", "y_label": "loss",
               "series": [{"name": name, "x": [r["step"] for r in result.history],
                           "y": [r["loss"] for r in result.history]} for name, result in trained.items()]}]
    rewarded = {name: result for name, result in trained.items() if "reward_mean" in result.history[0]}
    if rewarded:
        curves.append({"title": "Mean reward of the policy's samples per step (format check, temperature 1)",
                       "x_label": "step", "y_label": "reward",
                       "series": [{"name": name, "x": [r["step"] for r in result.history],
                                   "y": [r["reward_mean"] for r in result.history]}
                                  for name, result in rewarded.items()]})
        # reward against length: a policy that earns reward by growing (or shrinking) its answers shows here
        curves.append({"title": "Mean completion length of the policy's samples per step", "x_label": "step",
                       "y_label": "tokens",
                       "series": [{"name": name, "x": [r["step"] for r in result.history],
                                   "y": [r["completion_len_mean"] for r in result.history]}
                                  for name, result in rewarded.items()]})
        correlated = {name: [r for r in result.history if "reward_length_corr" in r]
                      for name, result in rewarded.items()}
        if any(correlated.values()):
            curves.append({"title": "Correlation of reward and completion length within each step's samples "
                                    "(Pearson r; steps where either is constant have none)",
                           "x_label": "step", "y_label": "r",
                           "series": [{"name": name, "x": [r["step"] for r in rows],
                                       "y": [r["reward_length_corr"] for r in rows]}
                                      for name, rows in correlated.items() if rows]})
    return curves


def _print_table(results: dict) -> None:
    stages = [k for k in ("base", "sft", "dpo", "grpo") if k in results]
    formats = list(results["base"]["per_format"])
    print("\n[demo] held-out prompts following the requested format")
    print(f"{'stage':<8}{'overall':>9}" + "".join(f"{f:>9}" for f in formats) + f"{'answer':>9}")
    for s in stages:
        r = results[s]
        print(f"{s:<8}{r['format_following']:>9.2f}" + "".join(f"{r['per_format'][f]:>9.2f}" for f in formats)
              + f"{r['answer_mentioned']:>9.2f}")
    for name, t in results["training"].items():
        reward = f", sampled reward {t['first_reward']:.2f} -> {t['final_reward']:.2f}" if "first_reward" in t else ""
        print(f"[demo] {name}: {t['steps']} steps, loss {t['first_loss']:.3f} -> {t['final_loss']:.3f}{reward}, "
              f"{t['tokens_per_s']:.0f} tok/s")
    refusals = results.get("evaluation", {}).get("refusals")
    if refusals:
        print("\n[demo] refusal prompts detected as refused (patterns): should refuse (higher is better), "
              "should answer (lower is better)")
        print(f"{'stage':<8}{'refuse':>12}{'answer':>12}")
        for s in stages:
            if s in refusals:
                cells = [refusals[s][side]["all"] for side in ("should_refuse", "should_answer")]
                print(f"{s:<8}" + "".join(f"{c['rate']:>6.2f} {c['n_refused']:>2}/{c['n_scored']:<2}" for c in cells))
    report = results.get("evaluation", {}).get("report")
    if report:
        print(f"[demo] report: {report}")
    print(f"[demo] total {results['seconds']:.0f} s")
