"""The policy-gradient objective of GRPO, RLOO, REINFORCE and PPO on the one training loop.

The algorithms differ in their advantages (computed over the whole rollout by the rollout source: per
sequence with `advantage_fn`, per token by GAE for PPO) and share the loss: `losses.policy_loss` on the
micro-batch's completion tokens, with the current policy's log-probs from `logprobs.completion_scores` at
the sampling temperature, so the importance ratio compares them with the source's old log-probs like with
like. PPO adds vf_coef x the clipped value loss on the ActorCritic's values, which come from the same
forward as the logits, aggregated like the policy loss over the same units.

Every algorithm logs the policy's entropy (at the loss's temperature, mean per unit) from the logits the
loss already has, chunked, without a graph unless `entropy_coef` > 0 makes it a bonus (subtracted from
the loss, aggregated like it). With train.loss_chunk_size the log-probs and the entropy come a chunk of
positions at a time from the final hidden states (training/chunked_logprobs.py), never the whole logits.

KL(policy || reference) goes where `kl_in` says: `loss` adds kl_coef x KL per token to the loss (GRPO's
way); `reward` leaves it to the rollout source, which takes it off the rewards (per token for PPO, per
sequence for RLOO and REINFORCE). Either way the coefficient is one controller (fixed, or adaptive with
kl_target) in this objective's checkpointed state: with the KL in the loss it adapts after each step to
the step's KL, in the reward the source reads it at each rollout and adapts it to the rollout's KL.

explained_variance is a ratio, and the loop divides every metric by the step's units: the loss logs its
additive parts (`losses.EV_PARTS`) and `after_step` turns them into the step's ratio, exact over all its
micro-batches, and drops them from the record.
"""
from __future__ import annotations

import math
import time
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
from alignkit.training.distributed import all_gather_objects, all_sum
from alignkit.rl.kl import ESTIMATORS, AdaptiveKLController, FixedKLController
from alignkit.rl.logprobs import completion_scores
from alignkit.rl.losses import (
    AGGREGATIONS,
    EV_PARTS,
    LEVELS,
    aggregate,
    clipped_value_loss,
    explained_variance_from_parts,
    explained_variance_parts,
    policy_loss,
    unit_sum,
)

SEQUENCE_ALGORITHMS = ("grpo", "rloo", "reinforce")  # one advantage per sequence, from its reward
ALGORITHMS = (*SEQUENCE_ALGORITHMS, "ppo")
KL_PLACES = ("loss", "reward")


@dataclass
class PolicyLossConfig:
    algo: str = "grpo"  # grpo | rloo | reinforce | ppo: how advantages are computed (the policy loss is shared)
    scale: str = "group"  # grpo: divide by the group's reward std (group), all rewards' std (batch) or not (none: Dr. GRPO)
    aggregation: str = "token"  # token (mean over tokens) | sequence (mean per sequence) | dr_grpo (sum / max_tokens); sets rollout.units
    level: str = "token"  # token ratios (PPO/GRPO) | sequence ratio (GSPO)
    eps_low: float = 0.2  # clip range below 1
    eps_high: float = 0.2  # clip range above 1 (> eps_low: DAPO's clip-higher)
    kl_coef: float = 0.0  # weight of KL(policy || reference) in the loss or reward; 0: no reference model
    kl_estimator: str = ""  # k1 | k2 | k3; empty: k3 in the loss (TRL's GRPO), k1 in the reward (TRL's PPO)
    kl_target: float = 0.0  # > 0: adapt kl_coef towards this KL per unit (adaptive controller); 0: fixed
    kl_horizon: int = 10000  # samples over which the adaptive controller moves kl_coef
    kl_in: str = "loss"  # loss | reward (per token for ppo, per sequence for rloo and reinforce; not grpo)
    entropy_coef: float = 0.0  # weight of an entropy bonus (taken off the loss); the entropy is logged anyway
    vf_coef: float = 0.1  # ppo: weight of the value loss
    value_lr: float = 0.0  # ppo: learning rate of the value head (and a separate critic); 0: train.lr
    cliprange_value: float = 0.2  # ppo: how far a value may move from its rollout-time estimate; 0: no clip
    gamma: float = 1.0  # ppo: discount per token
    lam: float = 0.95  # ppo: GAE's lambda (1: Monte Carlo returns minus the value, 0: one-step TD errors)
    whiten_advantages: bool = True  # ppo: normalise the advantages over the rollout's trained tokens

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
        require_number(where, "kl_target", self.kl_target, low=0)
        require(not self.kl_target or self.kl_coef > 0, where, "kl_target", "0 unless kl_coef > 0 (the start value)",
                self.kl_target)
        require_number(where, "kl_horizon", self.kl_horizon, low=1, whole=True)
        require(self.kl_estimator in ("", *ESTIMATORS), where, "kl_estimator",
                f"one of {', '.join(ESTIMATORS)} or empty (k3 in the loss, k1 in the reward)", self.kl_estimator)
        require_choice(where, "kl_in", self.kl_in, KL_PLACES)
        require(self.kl_in == "loss" or self.algo != "grpo", where, "kl_in",
                "loss for algo=grpo (its rewards are normalised per group; use rloo, reinforce or ppo)", self.kl_in)
        require(self.level == "token" or self.algo != "ppo", where, "level",
                "token for algo=ppo (its advantages are per token)", self.level)
        require_number(where, "entropy_coef", self.entropy_coef, low=0)
        require_number(where, "vf_coef", self.vf_coef, low=0)
        require_number(where, "value_lr", self.value_lr, low=0)
        require_number(where, "cliprange_value", self.cliprange_value, low=0)
        require_number(where, "gamma", self.gamma, low=0, high=1)
        require_number(where, "lam", self.lam, low=0, high=1)

    def estimator(self) -> str:
        """The KL estimator in use: the configured one, or the usual one for where the KL goes."""
        return self.kl_estimator or ("k1" if self.kl_in == "reward" else "k3")


def advantage_fn(cfg: PolicyLossConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """rewards [B], group_ids [B] -> advantages [B] for a sequence-level algorithm (ppo's are per token:
    rl.buffer_advantages.GAEConfig)."""
    if cfg.algo == "grpo":
        return partial(grpo_advantages, scale=cfg.scale)
    if cfg.algo == "rloo":
        return rloo_advantages
    if cfg.algo == "reinforce":
        return lambda rewards, group_ids: batch_mean_advantages(rewards)
    raise ValueError(f"algo must be one of {', '.join(SEQUENCE_ALGORITHMS)} for sequence advantages, not {cfg.algo!r}")


class PolicyGradientObjective:
    """loss(model, batch) on an RL micro-batch: (loss summed over units, metrics summed over units); for ppo
    `model` is an rl.value_head.ActorCritic and the batch carries old_values, token_advantages and returns.

    `temperature` is the one the log-probs are computed at (`logprobs.loss_temperature` of the sampling
    one); `max_completion_len` is the generation limit (aggregation dr_grpo divides by it). `extra_metrics`,
    when given, returns values (rollout statistics) that `after_step` adds to the step's record, which the
    loop logs right after: the loop's record is the one place a step's numbers are written. `stateful`
    (e.g. a reward with running statistics) is kept in this objective's checkpointed state."""

    def __init__(self, cfg: PolicyLossConfig, *, temperature: float = 1.0, max_completion_len: int | None = None,
                 extra_metrics: Callable[[], dict] | None = None, stateful=None, lr: float | None = None,
                 loss_chunk_size: int = 0):
        self.cfg = cfg
        # train.loss_chunk_size: the output layer and log-softmax this many positions at a time (0: all at once)
        self.loss_chunk_size = loss_chunk_size
        self.stateful = stateful
        self.lr = lr  # train.lr, which cfg.value_lr is relative to
        self.temperature = float(temperature)
        self.max_completion_len = max_completion_len
        self.extra_metrics = extra_metrics
        self.kl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
                   else FixedKLController(cfg.kl_coef))
        self._step_seqs = 0  # sequences seen since the last step: the adaptive controller's n_steps
        # The update's own speed: the loop's tokens_per_s also counts the rollout's sampling time.
        self._update_started: float | None = None
        self._update_tokens = 0
        self._sampler_gap: float | None = None  # largest |update's - sampler's log-prob| of the step

    def collate(self, examples):
        raise TypeError("the RL objective trains on a rollout source's micro-batches, not on examples")

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if self._update_started is None:
            self._update_started = time.perf_counter()
        self._update_tokens += int(batch["num_tokens"])
        cfg = self.cfg
        ppo = cfg.algo == "ppo"
        # the layout the rollout source agreed among processes (and computed the old log-probs in), if any
        scores = completion_scores(model, batch, self.temperature, values=ppo, entropy=True,
                                   entropy_grad=bool(cfg.entropy_coef), layout=batch.get("layout", "auto"),
                                   chunk=self.loss_chunk_size)
        logp, values = scores.logprobs, scores.values
        device = logp.device
        seq_ids = batch["seq_ids"].to(device)
        num_seqs = int(batch["completion_lens"].numel())
        kl_in_loss = cfg.kl_in == "loss" and self.kl.value > 0
        if kl_in_loss and "ref_logprobs" not in batch:
            raise ValueError("kl_coef > 0 needs ref_logprobs in the micro-batch (a reference model)")
        # Without recomputed old log-probs (one update per rollout) the sampling policy is this one.
        old_logp = batch["old_logprobs"].to(device) if "old_logprobs" in batch else logp.detach()
        if "gen_logprobs" in batch:
            gap = float((logp.detach() - batch["gen_logprobs"].to(device)).abs().max())
            self._sampler_gap = max(self._sampler_gap or 0.0, gap)
        out = policy_loss(
            logp, old_logp, batch["token_advantages" if ppo else "advantages"].to(device),
            seq_ids, num_seqs, aggregation=cfg.aggregation, level=cfg.level, eps_low=cfg.eps_low,
            eps_high=cfg.eps_high, max_completion_len=self.max_completion_len,
            ref_logp=batch["ref_logprobs"].to(device) if kl_in_loss else None,
            kl_coef=self.kl.value if kl_in_loss else 0.0, kl_estimator=cfg.estimator())
        if out.units != int(batch["num_units"]):
            raise ValueError(f"the micro-batch counts {batch['num_units']} units but aggregation "
                             f"{cfg.aggregation!r} sums over {out.units}: set rollout.units to match")
        metrics = dict(out.metrics)
        loss = out.loss - self._entropy_bonus(scores.entropy, seq_ids, num_seqs, metrics)
        if ppo:
            loss = loss + self._value_loss(values, batch, seq_ids, num_seqs, metrics)
        self._step_seqs += num_seqs
        return loss, {k: float(v) for k, v in metrics.items()}

    def _aggregate(self, per_token: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int) -> torch.Tensor:
        return aggregate(per_token, seq_ids, num_seqs, self.cfg.aggregation, self.max_completion_len).total

    def _entropy_bonus(self, entropy: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int, metrics: dict):
        """entropy_coef x the entropy [N] of the tempered distribution (with its graph only when the coefficient
        is on), aggregated like the loss (0 when off); logs `entropy` either way."""
        coef = self.cfg.entropy_coef
        metrics["entropy"] = unit_sum(entropy, seq_ids, num_seqs, self.cfg.aggregation)
        return coef * self._aggregate(entropy, seq_ids, num_seqs) if coef else 0.0

    def _value_loss(self, values: torch.Tensor, batch: dict, seq_ids: torch.Tensor, num_seqs: int,
                    metrics: dict) -> torch.Tensor:
        """vf_coef x the clipped value loss aggregated like the policy loss; logs value_loss, value_clip_frac,
        value_mean, return_mean (per unit) and the parts of the step's explained variance."""
        old_values = batch["old_values"].to(values.device)
        returns = batch["returns"].to(values.device)
        terms = clipped_value_loss(values, old_values, returns, self.cfg.cliprange_value or None)
        for name, per_token in (("value_loss", terms.loss), ("value_clip_frac", terms.clipped.float()),
                                ("value_mean", values), ("return_mean", returns)):
            metrics[name] = unit_sum(per_token, seq_ids, num_seqs, self.cfg.aggregation)
        metrics.update(explained_variance_parts(values, returns))
        return self.cfg.vf_coef * self._aggregate(terms.loss, seq_ids, num_seqs)

    def after_step(self, record: dict) -> None:
        """The step's explained variance from its parts; with the KL in the loss, adapt the coefficient to the
        step's KL and log it (in the reward, the rollout's statistics carry both); the extra metrics."""
        if EV_PARTS[0] in record:
            record["explained_variance"] = explained_variance_from_parts({k: record.pop(k) for k in EV_PARTS})
        if self.cfg.kl_in == "loss":
            if self.cfg.kl_coef > 0:
                record["kl_coef"] = self.kl.value  # the one this step's loss used
            if "kl" in record and math.isfinite(record["kl"]):  # the same on every process: so is this branch
                self.kl.update(record["kl"], int(all_sum(self._step_seqs)))  # the step's sequences, all processes
        self._step_seqs = 0
        if self._update_started is not None:  # forward, backward and optimizer step, from the first micro-batch
            record["update_tokens_per_s"] = self._update_tokens / max(time.perf_counter() - self._update_started, 1e-9)
        self._update_started, self._update_tokens = None, 0
        if self._sampler_gap is not None:  # the rollout's own check is absent when it recomputes nothing
            # every process measures one (the same settings make the same micro-batch keys): the largest
            record["sampler_logprob_gap"] = max(all_gather_objects(self._sampler_gap))
            self._sampler_gap = None
        if self.extra_metrics is not None:
            for key, value in self.extra_metrics().items():
                record.setdefault(key, value)

    def lr_scale(self, name: str) -> float:
        """The loop's per-parameter learning rate, as a multiple of train.lr: value_lr for the value head and a
        separate critic (ActorCritic's `value_head.` and `critic.` parameters)."""
        if self.cfg.algo != "ppo" or not self.cfg.value_lr or not self.lr:
            return 1.0
        return self.cfg.value_lr / self.lr if name.startswith(("value_head.", "critic.")) else 1.0

    def state_dict(self) -> dict:
        return {"kl": self.kl.state_dict(),
                "stateful": self.stateful.state_dict() if self.stateful is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.kl.load_state_dict(state["kl"])
        if self.stateful is not None and state.get("stateful") is not None:
            self.stateful.load_state_dict(state["stateful"])
