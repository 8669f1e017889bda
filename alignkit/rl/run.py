"""`alignkit rl` (and its presets grpo, rloo, reinforce): online RL on prompts with a configured reward.

The run skeleton is the one every training run shares (training/run.py): the config is checked and the
output folder prepared before anything loads, then the prompts, then the model. The rollout source
samples from the policy as it trains; each step's record carries the rollout's statistics (reward mean
and std, completion length, truncation rate, generation speed) and a few generations per rollout go to
samples.jsonl in the run folder.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from functools import partial

import torch

from alignkit.atomic_write import write_text_atomic
from alignkit.config import require, require_number, to_dict
from alignkit.data.readers import DataSpec
from alignkit.models.config import ModelConfig
from alignkit.rewards.shaping import RewardShaping
from alignkit.rewards.spec import RewardSpec, build_reward, validate_reward_specs
from alignkit.rl.logprobs import loss_temperature
from alignkit.rl.losses import AGGREGATION_UNITS
from alignkit.rl.objective import (
    PolicyGradientObjective,
    PolicyLossConfig,
    advantage_fn,
)
from alignkit.rl.prompts import read_rl_prompts
from alignkit.rl.reward_fn import RolloutReward
from alignkit.rl.rollout import RolloutConfig, RolloutSource
from alignkit.training.config import TrainConfig
from alignkit.training.distributed import is_main
from alignkit.training.loop import TrainResult, train
from alignkit.training.run import finish_run, prepare_run, save_lm

SAMPLES = "samples.jsonl"


@dataclass
class RLConfig(PolicyLossConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: list[DataSpec] = field(default_factory=list)  # prompt files (any format alignkit reads); records' other fields reach the reward
    skip_bad: bool = False  # skip bad prompt records instead of stopping at the first
    rewards: list[RewardSpec] = field(default_factory=list)  # e.g. [{kind: format}, {kind: python, function: "pkg.mod:fn"}]
    reward_shaping: RewardShaping = field(default_factory=RewardShaping)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6))  # TRL GRPOConfig's default lr
    samples_per_step: int = 4  # generations of each rollout written to samples.jsonl; 0: none
    merge_lora: bool = True  # with LoRA, also write the merged model to final/ (the adapter goes to final/adapter)

    def validate(self, where: str = "") -> None:
        """Loss and reward settings (model, train, rollout and reward_shaping check themselves)."""
        super().validate(where)
        require(len(self.prompts) > 0, where, "prompts", "a list of at least one prompt file", self.prompts)
        validate_reward_specs(self.rewards, "rewards")
        require_number(where, "samples_per_step", self.samples_per_step, low=0, whole=True)
        # The rollout source makes each step's micro-batches; train.grad_accum would be silently ignored.
        require(self.train.grad_accum == 1, "train", "grad_accum", "1 (set rollout.grad_accum for RL)",
                self.train.grad_accum)
        # rollout.units follows the aggregation; a value set against it is a contradiction, not a default.
        units = AGGREGATION_UNITS[self.aggregation]
        require(self.rollout.units in (units, "tokens"), "rollout", "units",
                f"{units} for aggregation={self.aggregation} (or left out)", self.rollout.units)
        if self.aggregation == "dr_grpo":
            require_number("rollout", "max_tokens", self.rollout.max_tokens, low=1, whole=True)


class SampleLog:
    """samples.jsonl: the first `count` generations of each rollout, written at the step that sampled it.

    A resumed run repeats the steps after its checkpoint, so lines from those steps are dropped first."""

    def __init__(self, path: str, source: RolloutSource, tokenizer, count: int):
        self.path, self.source, self.tokenizer, self.count = path, source, tokenizer, count
        self.started = False

    def _drop_from(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] < step]
        write_text_atomic(self.path, "".join(kept))

    def __call__(self, step: int, record: dict) -> None:
        if not is_main() or self.count == 0:
            return
        if not self.started:
            self._drop_from(step)
            self.started = True
        if self.source.rollout_step != step - 1:  # this step trained on an earlier rollout
            return
        lines = []
        for s in self.source.buffer[:self.count]:
            prompt = self.tokenizer.decode(s.prompt_ids, skip_special_tokens=False)
            lines.append(json.dumps({"step": step, "group": s.group, "prompt": prompt, "completion": s.text,
                                     "reward": s.reward, "advantage": s.advantage, "truncated": s.truncated,
                                     "completion_tokens": len(s.completion_ids)}, ensure_ascii=False))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def load_prompts(cfg: RLConfig, tokenizer) -> tuple[list, list, dict]:
    prompts = read_rl_prompts(cfg.prompts, skip_bad=cfg.skip_bad)
    report = {"prompts": len(prompts), "files": [spec.path for spec in cfg.prompts]}
    print(f"{len(prompts)} prompts from {len(cfg.prompts)} file(s)", flush=True)
    return prompts, [], report


def make_reference(cfg: RLConfig, model):
    """None without a KL term; the policy with its adapter off under LoRA; else a frozen copy computing in
    the precision training uses (the loop turns the policy's own weights to bf16 under precision=bf16)."""
    if cfg.kl_coef <= 0:
        return None
    if cfg.model.lora.enabled:
        return "adapter"
    reference = copy.deepcopy(model).requires_grad_(False).eval()
    return reference.to(torch.bfloat16) if cfg.train.precision == "bf16" else reference


def _chain(*callbacks):
    def on_step(step: int, record: dict) -> None:
        for callback in callbacks:
            if callback is not None:
                callback(step, record)
    return on_step


def run_rl(cfg: RLConfig, *, model=None, tokenizer=None, on_step=None, judge_backend=None) -> TrainResult:
    """Train the policy with the configured algorithm; the final model goes to output_dir/final (HF layout)."""
    from alignkit.models.loading import load_model
    from alignkit.models.lora import apply_lora, merge_lora

    ctx = prepare_run(cfg, partial(load_prompts, cfg), tokenizer=tokenizer)
    reward = RolloutReward(build_reward(cfg.rewards, cfg.reward_shaping, judge_backend=judge_backend), ctx.tokenizer,
                           count_tokens=cfg.reward_shaping.length_penalty > 0)
    if model is None:
        model, _ = load_model(cfg.model.name, dtype=cfg.model.dtype)
    model = merge_lora(model)  # an adapter from an earlier stage is part of the starting policy
    if cfg.model.lora.enabled:
        model = apply_lora(model, cfg.model.lora)
    rollout = dataclasses.replace(cfg.rollout, units=AGGREGATION_UNITS[cfg.aggregation])
    source = RolloutSource(ctx.train_examples, ctx.tokenizer, reward, rollout, advantage_fn=advantage_fn(cfg),
                           reference=make_reference(cfg, model))

    def extra_metrics() -> dict:
        stats = {k: float(v) for k, v in source.last_stats.items()
                 if isinstance(v, (int, float)) and k not in ("rollout", "rollout_step")}
        return {**stats, **reward.last_metrics}

    objective = PolicyGradientObjective(cfg, temperature=loss_temperature(rollout.temperature),
                                        max_completion_len=rollout.max_tokens, extra_metrics=extra_metrics,
                                        stateful=reward)
    samples = SampleLog(os.path.join(ctx.out, SAMPLES), source, ctx.tokenizer, cfg.samples_per_step)
    result = train(model, objective, source=source, cfg=cfg.train, config_dict=to_dict(cfg),
                   on_step=_chain(samples, on_step))
    finish_run(ctx, result, partial(save_lm, model, ctx.tokenizer, lora=cfg.model.lora.enabled, merge=cfg.merge_lora))
    return result
