"""The advantages of a rollout's buffer, once its rewards and log-probs are in: what `RolloutSource` does
between scoring and serving micro-batches.

  * sequence level (GRPO, RLOO, REINFORCE): `advantage_fn(rewards [B], group_ids [B])` on the rewards,
    minus coef x each sequence's summed per-token KL when the KL is in the reward (`kl_penalised_rewards`);
  * token level (PPO, `GAEConfig`): the token rewards (`ppo_token_rewards`: the score at the last completion
    token, -coef x the token's KL at every token when the KL is in the reward) go through GAE with the
    critic's old values to per-token advantages (whitened over the buffer's trained tokens) and returns.
With the KL in the reward (`RewardKL`) the coefficient is the KL controller's value at rollout time; the
controller, which the objective owns and checkpoints, then takes the rollout's KL (per unit, as a loss would
log it). Truncated samples count as ended: GAE does not bootstrap them from a value.

Under several processes each holds its own share of the rollout (rollout.py). What spans the whole rollout
sees every process's numbers, gathered in rank order (`_across`): the sequence advantages are computed on the
whole rollout's rewards and group ids (a batch mean or std is then global; group ids are global, so a group's
statistics are its own), the KL that adapts the controller is the whole rollout's, and PPO's whitening uses
the whole rollout's advantages. Each process keeps its own slice, the numbers one process would give it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from alignkit.rl.advantages import gae as gae_estimate, kl_penalised_rewards, ppo_token_rewards, whiten
from alignkit.rl.buffer import Sample, scatter_tokens, seq_ids_of
from alignkit.rl.kl import ESTIMATORS, AdaptiveKLController, FixedKLController, token_kl
from alignkit.training.distributed import all_gather_objects

AdvantageFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class GAEConfig:
    """PPO's per-token advantages: generalised advantage estimation with the critic's values."""
    gamma: float = 1.0  # discount per token
    lam: float = 0.95  # GAE's lambda: 1 is the Monte Carlo return minus the value, 0 the one-step TD error
    whiten: bool = True  # normalise the advantages over the buffer's trained tokens


@dataclass
class RewardKL:
    """The KL to the reference inside the reward, -controller.value x the per-token `estimator` (k1, as TRL's
    PPO and RLOO). `controller` is the objective's own, so its state is checkpointed with the objective."""
    controller: FixedKLController | AdaptiveKLController
    estimator: str = "k1"

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, not {self.estimator!r}")


def _across(mine: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """(every process's `mine` concatenated in rank order, the slice of it that is this process's); in one
    process (mine, everything). A collective under several processes."""
    parts = all_gather_objects(mine.detach().cpu())
    if len(parts) == 1:
        return mine, slice(0, mine.numel())
    from alignkit.training.distributed import rank_world

    start = sum(p.numel() for p in parts[:rank_world()[0]])
    return torch.cat(parts), slice(start, start + mine.numel())


def assign_advantages(buffer: list[Sample], *, units: str, advantage_fn: AdvantageFn | None = None,
                      gae: GAEConfig | None = None, reward_kl: RewardKL | None = None) -> dict:
    """Every trained sample's advantages (and, with `gae`, its per-token advantages and returns), in place;
    returns the rollout's KL statistics when the KL is in the reward. `units` (tokens | sequences) is what
    the rollout's KL is averaged over."""
    if (gae is None) == (advantage_fn is None):
        raise ValueError("give advantage_fn (sequence advantages) or gae (per-token ones)")
    token_kls, coef, stats = _reward_kl(buffer, reward_kl, units)
    if gae is not None:
        _token_advantages(buffer, gae, token_kls, coef)
    else:
        _sequence_advantages(buffer, advantage_fn, token_kls, coef)
    return stats


def _reward_kl(buffer: list[Sample], reward_kl: RewardKL | None,
               units: str) -> tuple[list[torch.Tensor] | None, float, dict]:
    """(per sample its per-token KL estimate, the coefficient, stats) with the KL in the reward, else
    (None, 0, {}). The controller's value now is the coefficient; the rollout's KL then updates it, once
    per rollout, from its trained samples, averaged per unit as the loss's `kl` would be."""
    if reward_kl is None:
        return None, 0.0, {}
    controller = reward_kl.controller
    coef = controller.value
    kls = [token_kl(s.old_logprobs, s.ref_logprobs, reward_kl.estimator) for s in buffer]
    trained = [k for k, s in zip(kls, buffer) if s.trained]
    # the whole rollout's, on every process: each updates its copy of the controller alike
    trained = [k for rank_kls in all_gather_objects(trained) for k in rank_kls]
    if units == "tokens":
        measured = float(torch.cat(trained).mean())
    else:
        measured = float(torch.stack([k.mean() for k in trained]).mean())
    controller.update(measured, len(trained))
    return kls, coef, {"kl": measured, "kl_coef": coef}


def _sequence_advantages(buffer: list[Sample], advantage_fn: AdvantageFn, token_kls: list[torch.Tensor] | None,
                         coef: float) -> None:
    rewards = torch.tensor([s.reward for s in buffer], dtype=torch.float32)
    if token_kls is not None:
        lengths = [k.numel() for k in token_kls]
        rewards = kl_penalised_rewards(rewards, torch.cat(token_kls), seq_ids_of(lengths), coef)
    groups = torch.tensor([s.group for s in buffer], dtype=torch.long)
    rewards, mine = _across(rewards)
    groups, _ = _across(groups)
    advantages = torch.as_tensor(advantage_fn(rewards, groups), dtype=torch.float32).reshape(-1)
    if advantages.numel() != rewards.numel() or not bool(torch.isfinite(advantages).all()):
        raise ValueError(f"advantage_fn must return {rewards.numel()} finite values, got {advantages.numel()}")
    for s, a in zip(buffer, advantages[mine].tolist(), strict=True):
        s.advantage = a


def _token_advantages(buffer: list[Sample], cfg: GAEConfig, token_kls: list[torch.Tensor] | None,
                      coef: float) -> None:
    """GAE over the trained samples' token rewards, all sequences at once (nothing crosses a sequence)."""
    index = [i for i, s in enumerate(buffer) if s.trained]
    samples = [buffer[i] for i in index]
    seq_ids = seq_ids_of([len(s.completion_ids) for s in samples])
    scores = torch.tensor([s.reward for s in samples], dtype=torch.float32)
    kl = torch.cat([token_kls[i] for i in index]) if token_kls is not None else None
    rewards = ppo_token_rewards(scores, seq_ids, token_kl=kl, kl_coef=coef)
    values = torch.cat([s.old_values for s in samples])
    advantages, returns = gae_estimate(rewards, values, seq_ids, len(samples), gamma=cfg.gamma, lam=cfg.lam)
    if cfg.whiten:
        every, mine = _across(advantages)
        advantages = whiten(every)[mine]
    scatter_tokens(samples, advantages, "token_advantages")
    scatter_tokens(samples, returns, "returns")
    for s in samples:
        s.advantage = float(s.token_advantages[0])
