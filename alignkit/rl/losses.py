"""RL policy and value losses on the padding-free layout, as pure functions.

The training loop (alignkit/training/loop.py) divides every micro-batch's *summed* loss by the units
of the whole optimizer step, so the aggregation variants are written as "a sum over units":

* "token":    sum of per-token losses; units = completion tokens (a token-level mean over the step;
              TRL's "bnpo", DAPO's token-level normalisation).
* "sequence": sum over sequences of each sequence's mean token loss; units = sequences (GRPO's
              original form: every sequence weighs the same, whatever its length).
* "dr_grpo":  sum of per-token losses / max_completion_len; units = sequences, so the step's loss is
              sum / (sequences x max_completion_len), a constant divisor (Dr. GRPO: no length bias).

The rollout source sets batch["num_units"] with `loss_units`; `aggregate` returns the same count, so an
objective can check that the two agree. Metrics are summed over the same units as the loss, so the
loop's division turns them into the matching averages.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from alignkit.rl.kl import token_kl
from alignkit.rl.segments import segment_mean

AGGREGATIONS = ("token", "sequence", "dr_grpo")
LEVELS = ("token", "sequence")
# What each aggregation counts, in the names the rollout buffer's `units` setting uses.
AGGREGATION_UNITS = {"token": "tokens", "sequence": "sequences", "dr_grpo": "sequences"}


class Aggregated(NamedTuple):
    total: Tensor  # loss summed over units
    units: int     # what the loop divides by (summed over micro-batches)


def _check_aggregation(aggregation: str, max_completion_len: int | None) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {aggregation!r}")
    if aggregation == "dr_grpo" and not (max_completion_len and max_completion_len > 0):
        raise ValueError("aggregation 'dr_grpo' needs max_completion_len, the generation length limit")


def loss_units(aggregation: str, completion_lens: Tensor | Sequence[int]) -> int:
    """num_units of a micro-batch: its completion tokens ("token") or its sequences (the others)."""
    lens = torch.as_tensor(completion_lens)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {aggregation!r}")
    return int(lens.sum()) if aggregation == "token" else int(lens.numel())


def aggregate(per_token: Tensor, seq_ids: Tensor, num_seqs: int, aggregation: str,
              max_completion_len: int | None = None) -> Aggregated:
    """Per-token losses [N] -> (sum over units, units) for one aggregation variant."""
    _check_aggregation(aggregation, max_completion_len)
    if aggregation == "token":
        return Aggregated(per_token.sum(), int(per_token.numel()))
    if aggregation == "sequence":
        return Aggregated(segment_mean(per_token, seq_ids, num_seqs).sum(), num_seqs)
    return Aggregated(per_token.sum() / max_completion_len, num_seqs)


def unit_sum(per_token: Tensor, seq_ids: Tensor, num_seqs: int, aggregation: str) -> Tensor:
    """A per-token metric summed over the aggregation's units (detached): token sum for "token",
    sum of per-sequence means otherwise, so that dividing by the units gives its average."""
    per_token = per_token.detach().float()
    if aggregation == "token":
        return per_token.sum()
    return segment_mean(per_token, seq_ids, num_seqs).sum()


class ClipTerms(NamedTuple):
    loss: Tensor          # -min(r A, clip(r) A), same shape as the inputs
    ratio: Tensor
    low_clipped: Tensor   # bool: r < 1 - eps_low with A < 0 (no gradient flows)
    high_clipped: Tensor  # bool: r > 1 + eps_high with A > 0 (no gradient flows)


def clipped_surrogate(log_ratio: Tensor, advantages: Tensor, eps_low: float = 0.2,
                      eps_high: float | None = None) -> ClipTerms:
    """PPO's clipped surrogate with asymmetric clipping (DAPO's clip-higher: eps_high > eps_low lets
    unlikely tokens grow). Elementwise, so it serves token ratios and GSPO's sequence ratios alike."""
    eps_high = eps_low if eps_high is None else eps_high
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    low = (ratio < 1 - eps_low) & (advantages < 0)
    high = (ratio > 1 + eps_high) & (advantages > 0)
    return ClipTerms(loss, ratio, low, high)


def gspo_log_ratio(logp: Tensor, old_logp: Tensor, seq_ids: Tensor, num_seqs: int) -> Tensor:
    """[S] log of GSPO's sequence importance ratio: the mean token log-ratio, i.e. the log of the
    geometric mean of token ratios (length-normalised so long sequences do not explode it)."""
    return segment_mean(logp - old_logp, seq_ids, num_seqs)


class PolicyLoss(NamedTuple):
    loss: Tensor               # summed over units
    units: int
    metrics: dict[str, Tensor]  # detached, summed over the same units


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, seq_ids: Tensor, num_seqs: int, *,
                aggregation: str = "token", level: str = "token", eps_low: float = 0.2,
                eps_high: float | None = None, max_completion_len: int | None = None,
                ref_logp: Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3") -> PolicyLoss:
    """The clipped policy-gradient loss of PPO / GRPO / DAPO / Dr. GRPO / GSPO on one micro-batch.

    logp [N] (current policy, with grad), old_logp [N] (sampling policy), advantages [S] per sequence
    or [N] per token (level "token" only). level "token" clips token ratios; level "sequence" clips
    GSPO's sequence ratio, its loss shared by the sequence's tokens before aggregation. With ref_logp
    and kl_coef > 0, kl_coef x KL(policy || ref) per token is added to the loss (GRPO's KL term).
    Metrics: clip_low / clip_high / clip_frac (fraction in the clipped region), approx_kl (k3 of
    KL(old || new)), ratio, and kl when a reference is given."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    _check_aggregation(aggregation, max_completion_len)
    logp, old_logp = logp.float(), old_logp.float()
    n = logp.numel()
    advantages = advantages.float()
    if level == "token":
        if advantages.numel() == n:
            adv = advantages
        elif advantages.numel() == num_seqs:
            adv = advantages[seq_ids]
        else:
            raise ValueError(f"advantages must have {n} (per token) or {num_seqs} (per sequence) entries, "
                             f"got {advantages.numel()}")
        terms = clipped_surrogate(logp - old_logp, adv, eps_low, eps_high)
        per_token, ratio, low, high = terms
    else:
        if advantages.numel() != num_seqs:
            raise ValueError(f"GSPO needs one advantage per sequence ({num_seqs}), got {advantages.numel()}")
        terms = clipped_surrogate(gspo_log_ratio(logp, old_logp, seq_ids, num_seqs), advantages, eps_low, eps_high)
        per_token, ratio, low, high = (t[seq_ids] for t in terms)
    metrics = {}
    if ref_logp is not None and kl_coef:
        kl = token_kl(logp, ref_logp.float(), kl_estimator)
        per_token = per_token + kl_coef * kl
        metrics["kl"] = unit_sum(kl, seq_ids, num_seqs, aggregation)
    total, units = aggregate(per_token, seq_ids, num_seqs, aggregation, max_completion_len)
    metrics.update({
        "clip_low": unit_sum(low.float(), seq_ids, num_seqs, aggregation),
        "clip_high": unit_sum(high.float(), seq_ids, num_seqs, aggregation),
        "clip_frac": unit_sum((low | high).float(), seq_ids, num_seqs, aggregation),
        "approx_kl": unit_sum(token_kl(old_logp, logp.detach(), "k3"), seq_ids, num_seqs, aggregation),
        "ratio": unit_sum(ratio, seq_ids, num_seqs, aggregation),
    })
    return PolicyLoss(total, units, metrics)


class ValueTerms(NamedTuple):
    loss: Tensor     # per token, 0.5 x squared error (the clipped one where it is larger)
    clipped: Tensor  # bool: the clipped prediction's error was the larger one


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor,
                       clip_range: float | None = 0.2) -> ValueTerms:
    """PPO's value loss: 0.5 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2) per token; the clip
    keeps the value head from moving further than c from its rollout-time estimate in one update.
    clip_range None gives the plain 0.5 (V - R)^2. Aggregate the result like any per-token loss."""
    values, old_values, returns = values.float(), old_values.float(), returns.float()
    plain = (values - returns) ** 2
    if clip_range is None:
        return ValueTerms(0.5 * plain, torch.zeros_like(plain, dtype=torch.bool))
    clipped_v = torch.max(torch.min(values, old_values + clip_range), old_values - clip_range)
    clipped = (clipped_v - returns) ** 2
    return ValueTerms(0.5 * torch.max(plain, clipped), (clipped > plain).detach())


# The sums explained variance is made of: additive over micro-batches and processes, unlike the ratio.
EV_PARTS = ("ev_count", "ev_returns", "ev_returns_sq", "ev_errors", "ev_errors_sq")


def explained_variance_parts(values: Tensor, returns: Tensor) -> dict[str, float]:
    """Count, sum and sum of squares of the returns and of the errors R - V (float64), the pieces
    `explained_variance_from_parts` needs: sum them over a step's micro-batches, or scale them all by
    one number (the loop divides every metric by the step's units), and the ratio stays exact."""
    returns = returns.detach().double()
    errors = returns - values.detach().double()
    pieces = (returns.numel(), returns.sum(), (returns * returns).sum(), errors.sum(), (errors * errors).sum())
    return {name: float(p) for name, p in zip(EV_PARTS, pieces)}


def explained_variance_from_parts(parts: dict[str, float]) -> float:
    """1 - Var(R - V) / Var(R) from the (possibly summed, or uniformly scaled) parts; NaN when the returns
    do not vary (or there are none)."""
    count, r_sum, r_sq, e_sum, e_sq = (float(parts[name]) for name in EV_PARTS)
    if count <= 0:
        return float("nan")
    var_r = r_sq / count - (r_sum / count) ** 2
    if var_r <= 1e-12 * max(r_sq / count, 1e-30):  # rounding residue of a constant
        return float("nan")
    return 1.0 - (e_sq / count - (e_sum / count) ** 2) / var_r


def explained_variance(values: Tensor, returns: Tensor) -> Tensor:
    """1 - Var(R - V) / Var(R) over a batch's tokens: 1 is a perfect value head, 0 no better than a
    constant. NaN when the returns do not vary. A ratio, not additive: to combine batches, sum their
    `explained_variance_parts` instead."""
    return torch.tensor(explained_variance_from_parts(explained_variance_parts(values, returns)))


def entropy_from_logprobs(logprobs: Tensor, chunk_size: int = 1024) -> Tensor:
    """[K] entropy (nats) -sum p log p of each row of `logprobs` [K, V], a normalised log-distribution (a
    log_softmax the caller already holds), a chunk of rows at a time so only one chunk's probabilities
    exist at once. Keeps the graph, so it also serves an entropy bonus."""
    rows = logprobs.reshape(-1, logprobs.shape[-1])
    out = [_entropy_rows(chunk) for chunk in rows.split(chunk_size, dim=0)]
    if not out:
        return logprobs.new_zeros(logprobs.shape[:-1], dtype=torch.float32)
    return torch.cat(out).float().reshape(logprobs.shape[:-1])


def _entropy_rows(logprobs: Tensor) -> Tensor:
    p = logprobs.exp()
    # A token the distribution excludes (log-prob -inf, a masked logit) adds 0, not 0 * -inf = NaN.
    return -torch.where(p > 0, p * logprobs, 0.0).sum(-1)


def entropy_from_logits(logits: Tensor, chunk_size: int = 1024, temperature: float = 1.0) -> Tensor:
    """[K] entropy (nats) of each row of softmax(logits / temperature), logits [K, V], in float32, a chunk of
    rows at a time. An RL loss that has the log-softmax already uses entropy_from_logprobs on it instead."""
    rows = logits.reshape(-1, logits.shape[-1])
    out = [entropy_from_logprobs(torch.log_softmax(chunk.float() / temperature, dim=-1), chunk_size)
           for chunk in rows.split(chunk_size, dim=0)]
    if not out:
        return logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.cat(out).reshape(logits.shape[:-1])


__all__ = ["AGGREGATIONS", "LEVELS", "AGGREGATION_UNITS", "Aggregated", "loss_units", "aggregate", "unit_sum",
           "ClipTerms", "clipped_surrogate", "gspo_log_ratio", "PolicyLoss", "policy_loss", "ValueTerms",
           "clipped_value_loss", "EV_PARTS", "explained_variance_parts", "explained_variance_from_parts",
           "explained_variance", "entropy_from_logprobs", "entropy_from_logits"]
