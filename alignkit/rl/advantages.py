"""Advantages for policy-gradient RL on the padding-free layout, as pure functions.

Per-sequence tensors are [S] (one entry per sampled completion, `group_ids` [S] naming the prompt it
answers); per-token tensors are [N] with `seq_ids` [N]. Group and sequence statistics are segment sums,
so groups of different sizes and sequences of different lengths may be packed together.

These statistics are batch-level: compute them over the whole rollout batch before it is split into
micro-batches, or a group cut across micro-batches would get two different baselines.
"""
from __future__ import annotations

import torch
from torch import Tensor

from alignkit.rl.segments import (
    from_padded,
    group_index,
    segment_count,
    segment_sum,
    seq_starts,
    to_padded,
)

SCALES = ("group", "batch", "none")


def _group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dense group index [S], group sizes [G], group sums [G])."""
    idx, groups = group_index(group_ids)
    counts = torch.bincount(idx, minlength=groups).to(rewards.dtype)
    return idx, counts, segment_sum(rewards, idx, groups)


def grpo_advantages(rewards: Tensor, group_ids: Tensor, *, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """GRPO: reward minus its group's mean, divided by (std + eps).

    `scale`: "group" divides by the group's std (GRPO), "batch" by the std of all rewards, "none" does not
    divide (Dr. GRPO: the std scaling over-weights prompts whose samples nearly agree). Stds are
    Bessel-corrected and eps=1e-4 is added to the std, as TRL 1.16 does, so the numbers carry over.
    A group of one sample has nothing to compare with and gets advantage 0."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
    rewards = rewards.float()
    idx, counts, sums = _group_stats(rewards, group_ids)
    centred = rewards - (sums / counts)[idx]
    if scale == "none":
        return centred
    if scale == "group":
        sq = segment_sum(centred * centred, idx, counts.numel())
        var = torch.where(counts > 1, sq / (counts - 1).clamp(min=1), torch.zeros_like(sq))
        std = var.sqrt()[idx]
    else:
        std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
    return centred / (std + eps)


def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO: each sample's baseline is the mean reward of the *other* k-1 samples of its prompt, which
    keeps the baseline independent of the sample (an unbiased gradient). A lone sample gets 0."""
    rewards = rewards.float()
    idx, counts, sums = _group_stats(rewards, group_ids)
    k = counts[idx]
    baseline = (sums[idx] - rewards) / (k - 1).clamp(min=1)
    return torch.where(k > 1, rewards - baseline, torch.zeros_like(rewards))


def batch_mean_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE with the batch mean reward as the baseline."""
    rewards = rewards.float()
    return rewards - rewards.mean()


def whiten(values: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) with the Bessel-corrected variance; with shift_mean=False the mean
    is added back (PPO whitens rewards that way, keeping their sign information)."""
    values = values.float()
    mean = values.mean()
    var = values.var() if values.numel() > 1 else values.new_zeros(())
    out = (values - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


class RunningBaseline:
    """REINFORCE baseline from past batches: the running mean of every reward seen (decay=None) or an
    exponential moving average (decay in [0, 1)). Using only *past* rewards keeps the baseline
    independent of the current samples. Lives in an objective's state, restored on resume.

    Feed `update` the step's reward sum and count reduced over all processes (e.g. from the logged
    record), so every process keeps the same baseline."""

    def __init__(self, decay: float | None = None):
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1) or None, not {decay}")
        self.decay = decay
        self.value = 0.0
        self.count = 0

    def advantages(self, rewards: Tensor) -> Tensor:
        """rewards - baseline; before any update there is no history, so the batch mean stands in."""
        rewards = rewards.float()
        baseline = self.value if self.count else float(rewards.mean())
        return rewards - baseline

    def update(self, reward_sum: float, count: int) -> None:
        if count <= 0:
            return
        mean = float(reward_sum) / count
        if self.decay is None:
            self.value += (mean - self.value) * count / (self.count + count)
        else:
            self.value = mean if self.count == 0 else self.decay * self.value + (1 - self.decay) * mean
        self.count += int(count)

    def state_dict(self) -> dict:
        return {"value": self.value, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.count = float(state["value"]), int(state["count"])


def kl_penalised_rewards(rewards: Tensor, token_kl: Tensor, seq_ids: Tensor, coef: float) -> Tensor:
    """[S] sequence rewards minus coef x the sequence's summed per-token KL (RLOO/REINFORCE keep the KL
    in the reward as one number per sequence)."""
    return rewards.float() - coef * segment_sum(token_kl.float(), seq_ids, rewards.numel())


def ppo_token_rewards(scores: Tensor, seq_ids: Tensor, *, token_kl: Tensor | None = None,
                      kl_coef: float = 0.0) -> Tensor:
    """[N] PPO per-token rewards: -kl_coef x token_kl at every completion token (when the KL is in the
    reward), plus the sequence's scalar score at its LAST completion token, where the episode ends."""
    num_seqs = scores.numel()
    counts = segment_count(seq_ids, num_seqs)
    if bool((counts == 0).any()):
        raise ValueError("every sequence needs at least one completion token to carry its score")
    last = seq_starts(seq_ids, num_seqs) + counts - 1
    if token_kl is None:
        out = torch.zeros(seq_ids.numel(), dtype=torch.float32, device=scores.device)
    else:
        out = -kl_coef * token_kl.detach().float()
    return out.index_add(0, last, scores.detach().float())


def gae(rewards: Tensor, values: Tensor, seq_ids: Tensor, num_seqs: int, *, gamma: float = 1.0,
        lam: float = 0.95, last_values: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation per sequence: (advantages [N], returns [N]).

    A reverse scan along each sequence: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t +
    gamma lam A_{t+1}. After the last token V is `last_values` [S] (default 0: the episode ended; pass
    value estimates to bootstrap truncated ones). returns = A + V, the value targets. The scan runs over
    time on an [S, Lmax] view, all sequences at once; nothing crosses a sequence boundary."""
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got {gamma}, {lam}")
    rewards, values = rewards.detach().float(), values.detach().float()
    counts = segment_count(seq_ids, num_seqs)
    r = to_padded(rewards, seq_ids, num_seqs)
    width = r.shape[1]
    # One extra column holds each sequence's value after its last token.
    v = torch.zeros(num_seqs, width + 1, dtype=torch.float32, device=values.device)
    v[:, :width] = to_padded(values, seq_ids, num_seqs)
    boot = last_values.detach().float() if last_values is not None else v.new_zeros(num_seqs)
    v[torch.arange(num_seqs, device=v.device), counts] = boot
    valid = torch.arange(width, device=r.device)[None, :] < counts[:, None]
    adv = torch.zeros_like(r)
    running = r.new_zeros(num_seqs)
    for t in range(width - 1, -1, -1):
        delta = (r[:, t] + gamma * v[:, t + 1] - v[:, t]) * valid[:, t]
        running = delta + gamma * lam * running
        adv[:, t] = running
    advantages = from_padded(adv, seq_ids, num_seqs)
    return advantages, advantages + values


__all__ = ["grpo_advantages", "rloo_advantages", "batch_mean_advantages", "whiten", "RunningBaseline",
           "kl_penalised_rewards", "ppo_token_rewards", "gae", "SCALES"]
