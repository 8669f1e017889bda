"""The policy-gradient objective of GRPO, RLOO and REINFORCE on the one training loop.

The algorithms differ in their advantages (computed over the whole rollout by the rollout source, see
`advantage_fn`) and share the loss: `losses.policy_loss` on the micro-batch's completion tokens, with the
current policy's log-probs from `logprobs.completion_logprobs` at the sampling temperature, so the
importance ratio compares them with the source's old log-probs like with like.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from alignkit.config import require, require_choice, require_number
from alignkit.rl.advantages import (
    SCALES,
    batch_mean_advantages,
    grpo_advantages,
    rloo_advantages,
)
from alignkit.rl.kl import ESTIMATORS, AdaptiveKLController, FixedKLController
from alignkit.rl.logprobs import completion_logprobs
from alignkit.rl.losses import AGGREGATIONS, LEVELS, policy_loss

ALGORITHMS = ("grpo", "rloo", "reinforce")


@dataclass
class PolicyLossConfig:
    algo: str = "grpo"  # grpo | rloo | reinforce: how advantages are computed (the loss is shared)
    scale: str = "group"  # grpo: divide by the group's reward std (group), all rewards' std (batch) or not (none: Dr. GRPO)
    aggregation: str = "token"  # token (mean over tokens) | sequence (mean per sequence) | dr_grpo (sum / max_tokens); sets rollout.units
    level: str = "token"  # token ratios (PPO/GRPO) | sequence ratio (GSPO)
    eps_low: float = 0.2  # clip range below 1
    eps_high: float = 0.2  # clip range above 1 (> eps_low: DAPO's clip-higher)
    kl_coef: float = 0.0  # weight of KL(policy || reference) in the loss; 0: no reference model
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_target: float = 0.0  # > 0: adapt kl_coef towards this KL per unit (adaptive controller); 0: fixed
    kl_horizon: int = 10000  # samples over which the adaptive controller moves kl_coef

    def validate(self, where: str = "") -> None:
        require_choice(where, "algo", self.algo, ALGORITHMS)
        require_choice(where, "scale", self.scale, SCALES)
        require(self.scale == "group" or self.algo == "grpo", where, "scale", "group unless algo is grpo",
                self.scale)
        require_choice(where, "aggregation", self.aggregation, AGGREGATIONS)
        require_choice(where, "level", self.level, LEVELS)
        require_number(where, "eps_low", self.eps_low, low=0, high=1, low_open=True, high_open=True)
        require_number(where, "eps_high", self.eps_high, low=0, low_open=True)
        require_number(where, "kl_coef", self.kl_coef, low=0)
        require_choice(where, "kl_estimator", self.kl_estimator, ESTIMATORS)
        require_number(where, "kl_target", self.kl_target, low=0)
        require(not self.kl_target or self.kl_coef > 0, where, "kl_target", "0 unless kl_coef > 0 (the start value)",
                self.kl_target)
        require_number(where, "kl_horizon", self.kl_horizon, low=1, whole=True)


def advantage_fn(cfg: PolicyLossConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """rewards [B], group_ids [B] -> advantages [B] for the configured algorithm."""
    if cfg.algo == "grpo":
        return partial(grpo_advantages, scale=cfg.scale)
    if cfg.algo == "rloo":
        return rloo_advantages
    if cfg.algo == "reinforce":
        return lambda rewards, group_ids: batch_mean_advantages(rewards)
    raise ValueError(f"algo must be one of {', '.join(ALGORITHMS)}, not {cfg.algo!r}")


class PolicyGradientObjective:
    """loss(model, batch) on an RL micro-batch: (policy loss summed over units, metrics summed over units).

    `temperature` is the one the log-probs are computed at (`logprobs.loss_temperature` of the sampling
    one); `max_completion_len` is the generation limit (aggregation dr_grpo divides by it). `extra_metrics`,
    when given, returns values (rollout statistics) that `after_step` adds to the step's record, which the
    loop logs right after: the loop's record is the one place a step's numbers are written. `stateful`
    (e.g. a reward with running statistics) is kept in this objective's checkpointed state."""

    def __init__(self, cfg: PolicyLossConfig, *, temperature: float = 1.0, max_completion_len: int | None = None,
                 extra_metrics: Callable[[], dict] | None = None, stateful=None):
        self.cfg = cfg
        self.stateful = stateful
        self.temperature = float(temperature)
        self.max_completion_len = max_completion_len
        self.extra_metrics = extra_metrics
        self.kl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
                   else FixedKLController(cfg.kl_coef))
        self._step_seqs = 0  # sequences seen since the last step: the adaptive controller's n_steps

    def collate(self, examples):
        raise TypeError("the RL objective trains on a rollout source's micro-batches, not on examples")

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logp = completion_logprobs(model, batch, self.temperature)
        device = logp.device
        num_seqs = int(batch["completion_lens"].numel())
        use_kl = self.kl.value > 0
        if use_kl and "ref_logprobs" not in batch:
            raise ValueError("kl_coef > 0 needs ref_logprobs in the micro-batch (a reference model)")
        out = policy_loss(
            logp, batch["old_logprobs"].to(device), batch["advantages"].to(device), batch["seq_ids"].to(device),
            num_seqs, aggregation=self.cfg.aggregation, level=self.cfg.level, eps_low=self.cfg.eps_low,
            eps_high=self.cfg.eps_high, max_completion_len=self.max_completion_len,
            ref_logp=batch["ref_logprobs"].to(device) if use_kl else None, kl_coef=self.kl.value,
            kl_estimator=self.cfg.kl_estimator)
        if out.units != int(batch["num_units"]):
            raise ValueError(f"the micro-batch counts {batch['num_units']} units but aggregation "
                             f"{self.cfg.aggregation!r} sums over {out.units}: set rollout.units to match")
        self._step_seqs += num_seqs
        return out.loss, {k: float(v) for k, v in out.metrics.items()}

    def after_step(self, record: dict) -> None:
        """Adapt the KL coefficient to the step's KL, log the coefficient and the extra metrics."""
        if self.cfg.kl_coef > 0:
            record["kl_coef"] = self.kl.value  # the one this step's loss used
        if "kl" in record and math.isfinite(record["kl"]):
            self.kl.update(record["kl"], self._step_seqs)
        self._step_seqs = 0
        if self.extra_metrics is not None:
            for key, value in self.extra_metrics().items():
                record.setdefault(key, value)

    def state_dict(self) -> dict:
        return {"kl": self.kl.state_dict(),
                "stateful": self.stateful.state_dict() if self.stateful is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.kl.load_state_dict(state["kl"])
        if self.stateful is not None and state.get("stateful") is not None:
            self.stateful.load_state_dict(state["stateful"])
