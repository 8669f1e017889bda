"""`alignkit rl` (and its presets grpo, rloo, reinforce, ppo): online RL on prompts with a configured reward.

The run skeleton is the one every training run shares (training/run.py): the config is checked and the
output folder prepared before anything loads, then the prompts, then the model. The rollout source
samples from the policy as it trains; each step's record carries the rollout's statistics (reward mean
and std, completion length, truncation rate, generation speed) and a few generations per rollout go to
samples.jsonl in the run folder.

PPO trains an rl.value_head.ActorCritic: the policy with a value head on its own transformer, or on a
separate critic's (critic.model). The loop trains and checkpoints the pair as one model; final/ holds the
policy in the Hugging Face layout, as for the other algorithms, plus value_head.safetensors (and the
critic's transformer in final/critic). LoRA applies to the policy alone: a separate critic trains in full.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from functools import partial

import torch

from alignkit.config import ConfigError, require, require_number, to_dict
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
from alignkit.data.prompts import read_prompt_records
from alignkit.rl.reward_fn import RolloutReward
from alignkit.training.precision import model_device, resolve_precision
from alignkit.rl.buffer_advantages import GAEConfig, RewardKL
from alignkit.rl.rollout import RolloutConfig, RolloutSource
from alignkit.rl.value_head import ActorCritic, load_critic, save_value_model, unwrap_policy
from alignkit.training.config import TrainConfig
from alignkit.training.loop import TrainResult, chain_on_step, train
from alignkit.training.run import finish_run, prepare_run, save_lm
from alignkit.training.tracking import StepLog

SAMPLES = "samples.jsonl"


@dataclass
class CriticConfig:
    model: str = ""  # ppo: empty puts the value head on the policy's transformer; else a causal LM or reward model (same tokenizer)


@dataclass
class RLConfig(PolicyLossConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: list[DataSpec] = field(default_factory=list)  # prompt files (any format alignkit reads); records' other fields reach the reward
    skip_bad: bool = False  # skip bad prompt records instead of stopping at the first
    rewards: list[RewardSpec] = field(default_factory=list)  # e.g. [{kind: format}, {kind: python, function: "pkg.mod:fn"}]
    reward_shaping: RewardShaping = field(default_factory=RewardShaping)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6))  # TRL GRPOConfig's default lr
    samples_per_step: int = 4  # generations of each rollout written to samples.jsonl; 0: none
    merge_lora: bool = True  # with LoRA, also write the merged model to final/ (the adapter goes to final/adapter)

    def validate(self, where: str = "") -> None:
        """Loss and reward settings (model, train, rollout and reward_shaping check themselves)."""
        super().validate(where)
        require(len(self.prompts) > 0, where, "prompts", "a list of at least one prompt file", self.prompts)
        validate_reward_specs(self.rewards, "rewards")
        require_number(where, "samples_per_step", self.samples_per_step, low=0, whole=True)
        require(not self.critic.model or self.algo == "ppo", "critic", "model", "empty unless algo is ppo",
                self.critic.model)
        # The rollout source makes each step's micro-batches; train.grad_accum would be silently ignored.
        require(self.train.grad_accum == 1, "train", "grad_accum", "1 (set rollout.grad_accum for RL)",
                self.train.grad_accum)
        # rollout.units follows the aggregation; a value set against it is a contradiction, not a default.
        units = AGGREGATION_UNITS[self.aggregation]
        require(self.rollout.units in (units, "tokens"), "rollout", "units",
                f"{units} for aggregation={self.aggregation} (or left out)", self.rollout.units)
        if self.aggregation == "dr_grpo":
            require_number("rollout", "max_tokens", self.rollout.max_tokens, low=1, whole=True)
        world = launched_world()
        if world > 1:  # a launcher's run: each process samples its share of every step's prompts (rl/rollout.py)
            require(self.rollout.prompts_per_step % world == 0, "rollout", "prompts_per_step",
                    f"a multiple of the {world} processes (it is the number of prompts per step in all)",
                    self.rollout.prompts_per_step)
            require(self.rollout.backend == "local", "rollout", "backend",
                    "local under a launcher (a vLLM engine runs in one process)", self.rollout.backend)
            require(self.reward_shaping.normalize == "none", "reward_shaping", "normalize",
                    "none under a launcher (its statistics would be each process's own)", self.reward_shaping.normalize)
        if self.rollout.backend == "vllm":
            from alignkit.generation.vllm_backend import vllm_installed

            if not vllm_installed():
                raise ConfigError("rollout.backend: vllm needs vLLM, which is not installed (pip install vllm, on "
                                  "a Linux machine with a CUDA GPU); rollout.backend=local samples with transformers")


def launched_world() -> int:
    """The number of processes a launcher started (WORLD_SIZE), read before the process group exists."""
    from alignkit.training.distributed import launched

    return int(os.environ["WORLD_SIZE"]) if launched() else 1


class SampleLog(StepLog):
    """samples.jsonl: the first `count` generations of each rollout, written at the step that sampled it;
    under several processes the first `count` of every process's share, in rank order, each with its `rank`."""

    def __init__(self, path: str, source: RolloutSource, tokenizer, count: int):
        super().__init__(path, count)
        self.source, self.tokenizer = source, tokenizer
        self._rows: list[dict] = []

    def __call__(self, step: int, record: dict) -> None:
        from alignkit.training.distributed import all_gather_objects

        if self.count:  # every process, since gathering is collective; rank 0 writes
            self._rows = [row for rows in all_gather_objects(self._own(step)) for row in rows]
        super().__call__(step, record)

    def _own(self, step: int) -> list[dict]:
        if self.source.rollout_step != step - 1:  # this step trained on an earlier rollout
            return []
        return [{"step": step, "rank": self.source.rank, "group": s.group,
                 "prompt": self.tokenizer.decode(s.prompt_ids, skip_special_tokens=False),
                 "completion": s.text, "reward": s.reward, "advantage": s.advantage, "truncated": s.truncated,
                 "completion_tokens": len(s.completion_ids)} for s in self.source.buffer[:self.count]]

    def records(self, step: int) -> list[dict]:
        return self._rows


def load_prompts(cfg: RLConfig, tokenizer) -> tuple[list, list, dict]:
    prompts = read_prompt_records(cfg.prompts, skip_bad=cfg.skip_bad)
    report = {"prompts": len(prompts), "files": [spec.path for spec in cfg.prompts]}
    print(f"{len(prompts)} prompts from {len(cfg.prompts)} file(s)", flush=True)
    return prompts, [], report


def make_reference(cfg: RLConfig, model):
    """None without a KL term; the policy with its adapter off under LoRA; else a frozen copy computing in
    the precision training uses: under precision=bf16 the loop turns the policy's fp32 weights to bf16 and
    keeps its buffers (rotary frequencies) fp32, so the copy does the same, and the two agree exactly at
    the start (a bf16 rotary table alone moves log-probs by up to ~1e-2, which a k1 KL in the reward sums)."""
    if cfg.kl_coef <= 0:
        return None
    if cfg.model.lora.enabled:
        return "adapter"
    reference = copy.deepcopy(model).requires_grad_(False).eval()
    if resolve_precision(cfg.train.precision, model_device(model)) == "bf16":
        for param in reference.parameters():
            if param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
    return reference


def make_actor_critic(cfg: RLConfig, policy) -> ActorCritic:
    """The policy with its value head: on its own transformer, or on critic.model's (a reward model's score
    head starts the value head)."""
    if not cfg.critic.model:
        return ActorCritic(policy)
    critic, head = load_critic(cfg.critic.model, dtype=cfg.model.dtype)
    return ActorCritic(policy, critic, head_weight=head)


def advantage_settings(cfg: RLConfig, objective: PolicyGradientObjective) -> dict:
    """The rollout source's advantage keywords: GAE for ppo, else the algorithm's advantage_fn; with the KL
    in the reward, the objective's KL controller (whose state the objective checkpoints)."""
    reward_kl = RewardKL(objective.kl, cfg.estimator()) if cfg.kl_in == "reward" and cfg.kl_coef > 0 else None
    if cfg.algo == "ppo":
        return {"gae": GAEConfig(cfg.gamma, cfg.lam, cfg.whiten_advantages), "reward_kl": reward_kl}
    return {"advantage_fn": advantage_fn(cfg), "reward_kl": reward_kl}


def save_final(model, tokenizer, folder: str, *, lora: bool, merge: bool) -> None:
    """The policy in the Hugging Face layout (`save_lm`); for an ActorCritic also its value head and critic."""
    save_lm(unwrap_policy(model), tokenizer, folder, lora=lora, merge=merge)
    if isinstance(model, ActorCritic):
        save_value_model(model, folder)


def run_rl(cfg: RLConfig, *, model=None, tokenizer=None, on_step=None, judge_backend=None) -> TrainResult:
    """Train the policy with the configured algorithm; the final model goes to output_dir/final (HF layout)."""
    from alignkit.models.loading import load_model
    from alignkit.models.lora import apply_lora, merge_lora

    ctx = prepare_run(cfg, partial(load_prompts, cfg), tokenizer=tokenizer)
    reward = RolloutReward(build_reward(cfg.rewards, cfg.reward_shaping, judge_backend=judge_backend))
    if model is None:
        model, _ = load_model(cfg.model.name, dtype=cfg.model.dtype, quantization=cfg.model.quantization_settings())
    model = merge_lora(model)  # an adapter from an earlier stage is part of the starting policy
    if cfg.model.lora.enabled:
        model = apply_lora(model, cfg.model.lora, seed=cfg.train.seed)
    reference = make_reference(cfg, model)  # of the policy alone
    if cfg.algo == "ppo":
        model = make_actor_critic(cfg, model)
    rollout = dataclasses.replace(cfg.rollout, units=AGGREGATION_UNITS[cfg.aggregation])

    def extra_metrics() -> dict:
        stats = {k: float(v) for k, v in source.last_stats.items()
                 if isinstance(v, (int, float)) and k not in ("rollout", "rollout_step")}
        return {**stats, **reward.last_metrics}

    objective = PolicyGradientObjective(cfg, temperature=loss_temperature(rollout.temperature),
                                        max_completion_len=rollout.max_tokens, extra_metrics=extra_metrics,
                                        stateful=reward, lr=cfg.train.lr,
                                        loss_chunk_size=cfg.train.loss_chunk_size)
    source = RolloutSource(ctx.train_examples, ctx.tokenizer, reward, rollout, reference=reference,
                           loss_chunk_size=cfg.train.loss_chunk_size, **advantage_settings(cfg, objective))
    samples = SampleLog(os.path.join(ctx.out, SAMPLES), source, ctx.tokenizer, cfg.samples_per_step)
    try:
        result = train(model, objective, source=source, cfg=cfg.train, config_dict=to_dict(cfg),
                       on_step=chain_on_step(samples, on_step))
    finally:
        source.close()  # drops the vLLM engine and removes its folder
    finish_run(ctx, result, partial(save_final, model, ctx.tokenizer, lora=cfg.model.lora.enabled,
                                    merge=cfg.merge_lora))
    return result
