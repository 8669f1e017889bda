"""Preference-learning objectives as small pure functions of per-sequence log-probabilities.

Every function takes *summed* log-probabilities of whole responses (shape [batch], or
[batch, N] for ranked lists) and returns a `LossOutput`:

* `losses`: one loss per example, shape [batch]. They are never averaged here, because the
  training loop sums them over all gradient-accumulation micro-batches and divides by the
  total number of examples; a mean per micro-batch would weight small micro-batches wrongly.
* `metrics`: detached tensors, each of shape [batch], so the loop can aggregate them exactly
  the way it aggregates the losses.

Maths runs in at least float32: sums of bf16 log-probs lose too many digits for a margin.
Value checks on the inputs (positive lengths, a well-formed response mask) cost a device
sync or two per call; that is cheap next to the forward passes that produced the inputs.
Defaults match TRL 1.16's config defaults where TRL has the loss, so numbers carried over
from TRL mean the same thing, and the paper's plain form otherwise (RRHF, PRO).
Hyperparameters with no established default (SimPO, SLiC-HF, robust DPO's ε) must be given.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


__all__ = [
    "LossOutput", "dpo_loss", "ipo_loss", "robust_dpo_loss", "slic_hf_loss", "simpo_loss", "orpo_loss",
    "rrhf_loss", "pro_loss", "kto_reference_point", "kto_loss", "reward_model_loss",
]


class LossOutput(NamedTuple):
    """A NamedTuple so that callers may write `losses, metrics = dpo_loss(...)`."""

    losses: Tensor  # [batch], not reduced
    metrics: dict[str, Tensor]  # each detached, [batch]


# --------------------------------------------------------------------------- input checks


def _as_float(fn: str, name: str, value: Tensor) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{fn}: `{name}` must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{fn}: `{name}` must be a floating-point tensor of log-probs, got dtype {value.dtype}")
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value


def _same_shape(fn: str, named: dict[str, Tensor], ndim: int) -> None:
    items = list(named.items())
    first_name, first = items[0]
    if first.dim() != ndim:
        layout = "[batch]" if ndim == 1 else "[batch, N]"
        raise ValueError(f"{fn}: `{first_name}` must have shape {layout}, got {tuple(first.shape)}")
    for name, tensor in items[1:]:
        if tensor.shape != first.shape:
            raise ValueError(
                f"{fn}: `{name}` has shape {tuple(tensor.shape)} but `{first_name}` has {tuple(first.shape)}"
            )


def _lengths(fn: str, name: str, lengths: Tensor, like: Tensor) -> Tensor:
    if not isinstance(lengths, Tensor):
        raise TypeError(f"{fn}: `{name}` must be a torch.Tensor of response token counts")
    if lengths.shape != like.shape:
        raise ValueError(f"{fn}: `{name}` has shape {tuple(lengths.shape)}, expected {tuple(like.shape)}")
    if bool((lengths <= 0).any()):
        bad = (lengths <= 0).nonzero()[0].tolist()
        raise ValueError(f"{fn}: `{name}` must be positive token counts; index {bad} holds {lengths[tuple(bad)]}")
    return lengths.to(like.dtype)


def _check_beta(fn: str, beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"{fn}: `beta` must be > 0, got {beta}")


def _check_smoothing(fn: str, label_smoothing: float) -> None:
    # At 0.5 the cDPO loss is flat and the robust estimator divides by zero; above it labels flip.
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"{fn}: `label_smoothing` must be in [0, 0.5), got {label_smoothing}")


def _pair_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "chosen_reward": chosen_rewards,
        "rejected_reward": rejected_rewards,
        "reward_margin": chosen_rewards - rejected_rewards,
        # Strict: a tie is not a correct preference.
        "accuracy": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype),
    }


def _reference_pair(fn: str, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, ...]:
    names = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps")
    tensors = tuple(_as_float(fn, n, t) for n, t in zip(names, (pc, pr, rc, rr)))
    _same_shape(fn, dict(zip(names, tensors)), ndim=1)
    return tensors


# --------------------------------------------------------------------------- reference-based pairwise


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """DPO (Rafailov et al. 2023) / cDPO: -(1-ε)·logσ(β·h) - ε·logσ(-β·h), h = (π_c - ref_c) - (π_r - ref_r)."""
    fn = "dpo_loss"
    _check_beta(fn, beta)
    _check_smoothing(fn, label_smoothing)
    pc, pr, rc, rr = _reference_pair(fn, policy_chosen_logps, policy_rejected_logps,
                                     reference_chosen_logps, reference_rejected_logps)
    chosen_logratios, rejected_logratios = pc - rc, pr - rr
    scaled = beta * (chosen_logratios - rejected_logratios)
    losses = -(1 - label_smoothing) * F.logsigmoid(scaled) - label_smoothing * F.logsigmoid(-scaled)
    return LossOutput(losses, _pair_metrics(beta * chosen_logratios, beta * rejected_logratios))


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> LossOutput:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm..."): (h - 1/(2β))², h = chosen log-ratio - rejected log-ratio.

    With `chosen_lengths`/`rejected_lengths` each log-ratio is divided by its response's
    token count first, as TRL does (TRL confirmed with the IPO authors that the paper's
    results used this); without them h uses the summed log-ratios of the paper's equation.
    """
    fn = "ipo_loss"
    _check_beta(fn, beta)
    pc, pr, rc, rr = _reference_pair(fn, policy_chosen_logps, policy_rejected_logps,
                                     reference_chosen_logps, reference_rejected_logps)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError(f"{fn}: give both `chosen_lengths` and `rejected_lengths`, or neither")
    chosen_logratios, rejected_logratios = pc - rc, pr - rr
    if chosen_lengths is None:
        margin = chosen_logratios - rejected_logratios
    else:
        margin = (chosen_logratios / _lengths(fn, "chosen_lengths", chosen_lengths, pc)
                  - rejected_logratios / _lengths(fn, "rejected_lengths", rejected_lengths, pr))
    losses = (margin - 1 / (2 * beta)) ** 2
    return LossOutput(losses, _pair_metrics(beta * chosen_logratios, beta * rejected_logratios))


def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    label_smoothing: float,
    beta: float = 0.1,
) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"): [(1-ε)·ℓ(h) - ε·ℓ(-h)] / (1-2ε), ℓ(x) = -logσ(β·x).

    `label_smoothing` is ε, the assumed rate of flipped preference labels; unlike cDPO this
    estimator is unbiased for the clean-label DPO loss.
    """
    fn = "robust_dpo_loss"
    _check_beta(fn, beta)
    _check_smoothing(fn, label_smoothing)
    pc, pr, rc, rr = _reference_pair(fn, policy_chosen_logps, policy_rejected_logps,
                                     reference_chosen_logps, reference_rejected_logps)
    chosen_logratios, rejected_logratios = pc - rc, pr - rr
    scaled = beta * (chosen_logratios - rejected_logratios)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(scaled) + eps * F.logsigmoid(-scaled)) / (1 - 2 * eps)
    return LossOutput(losses, _pair_metrics(beta * chosen_logratios, beta * rejected_logratios))


# --------------------------------------------------------------------------- reference-free pairwise


def slic_hf_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    delta: float,
    regularization_weight: float,
    regularization_logps: Tensor | None = None,
) -> LossOutput:
    """SLiC-HF (Zhao et al. 2023): max(0, δ - (π_c - π_r)) - λ·π_reg, π_reg = log-prob of the regularisation target.

    The regularisation target defaults to the chosen response; pass `regularization_logps`
    (summed log-probs of, e.g., an SFT reference output) to use another one.
    """
    fn = "slic_hf_loss"
    if delta < 0 or regularization_weight < 0:
        raise ValueError(
            f"{fn}: `delta` and `regularization_weight` must be >= 0, got {delta} and {regularization_weight}"
        )
    named = {"policy_chosen_logps": policy_chosen_logps, "policy_rejected_logps": policy_rejected_logps}
    if regularization_logps is not None:
        named["regularization_logps"] = regularization_logps
    named = {name: _as_float(fn, name, t) for name, t in named.items()}
    _same_shape(fn, named, ndim=1)
    pc, pr = named["policy_chosen_logps"], named["policy_rejected_logps"]
    nll = -named.get("regularization_logps", pc)
    margin = pc - pr
    losses = torch.relu(delta - margin) + regularization_weight * nll
    metrics = _pair_metrics(pc, pr)
    metrics["nll"] = nll.detach()
    return LossOutput(losses, metrics)


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float,
    gamma: float,
) -> LossOutput:
    """SimPO (Meng et al. 2024, "Simple Preference Optimization"): -logσ(β·π_c/|y_c| - β·π_r/|y_r| - γ)."""
    fn = "simpo_loss"
    _check_beta(fn, beta)
    pc = _as_float(fn, "policy_chosen_logps", policy_chosen_logps)
    pr = _as_float(fn, "policy_rejected_logps", policy_rejected_logps)
    _same_shape(fn, {"policy_chosen_logps": pc, "policy_rejected_logps": pr}, ndim=1)
    chosen_rewards = beta * pc / _lengths(fn, "chosen_lengths", chosen_lengths, pc)
    rejected_rewards = beta * pr / _lengths(fn, "rejected_lengths", rejected_lengths, pr)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return LossOutput(losses, _pair_metrics(chosen_rewards, rejected_rewards))


def _log1mexp(x: Tensor) -> Tensor:
    # log(1 - e^x) for x < 0. Near 0, expm1 keeps the digits that 1 - exp(x) cancels away;
    # far below 0, log1p does. -ln 2 is where the two are equally accurate.
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    odds_ratio_weight: float = 0.1,
) -> LossOutput:
    """ORPO (Hong et al. 2024, "Monolithic Preference Optimization without Reference Model"): -a_c - λ·logσ(log(odds(a_c)/odds(a_r))), a = π/|y|, odds(a) = e^a/(1-e^a).

    The NLL term is the chosen response's token-averaged NLL, as in the paper's L_SFT.
    `odds_ratio_weight` is λ (TRL calls it `beta`).
    """
    fn = "orpo_loss"
    if odds_ratio_weight < 0:
        raise ValueError(f"{fn}: `odds_ratio_weight` must be >= 0, got {odds_ratio_weight}")
    pc = _as_float(fn, "policy_chosen_logps", policy_chosen_logps)
    pr = _as_float(fn, "policy_rejected_logps", policy_rejected_logps)
    _same_shape(fn, {"policy_chosen_logps": pc, "policy_rejected_logps": pr}, ndim=1)
    chosen_avg = pc / _lengths(fn, "chosen_lengths", chosen_lengths, pc)
    rejected_avg = pr / _lengths(fn, "rejected_lengths", rejected_lengths, pr)
    for name, avg in (("policy_chosen_logps", chosen_avg), ("policy_rejected_logps", rejected_avg)):
        # Odds are undefined at probability 1 (and the gradient is NaN), and a positive
        # log-prob means the caller passed something that is not a log-probability.
        if bool((avg >= 0).any()):
            index = int((avg >= 0).nonzero()[0])
            raise ValueError(
                f"{fn}: `{name}` must be < 0 (a log-probability); "
                f"example {index} averages {float(avg[index])} per token"
            )
    log_odds = (chosen_avg - rejected_avg) - (_log1mexp(chosen_avg) - _log1mexp(rejected_avg))
    nll = -chosen_avg
    losses = nll - odds_ratio_weight * F.logsigmoid(log_odds)
    # TRL reports λ·(average log-prob) as the "reward"; keeping that makes dashboards comparable.
    metrics = _pair_metrics(odds_ratio_weight * chosen_avg, odds_ratio_weight * rejected_avg)
    metrics["log_odds_ratio"] = log_odds.detach()
    metrics["nll"] = nll.detach()
    return LossOutput(losses, metrics)


# --------------------------------------------------------------------------- ranked lists


def _ranked(
    fn: str, policy_logps: Tensor, lengths: Tensor, response_mask: Tensor | None, sft_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Validate [batch, N] inputs; returns (log-probs, length-normalised scores, bool mask)."""
    if sft_weight < 0:
        raise ValueError(f"{fn}: `sft_weight` must be >= 0, got {sft_weight}")
    logps = _as_float(fn, "policy_logps", policy_logps)
    _same_shape(fn, {"policy_logps": logps}, ndim=2)
    if response_mask is None:
        mask = torch.ones_like(logps, dtype=torch.bool)
    else:
        if response_mask.shape != logps.shape:
            raise ValueError(
                f"{fn}: `response_mask` has shape {tuple(response_mask.shape)}, expected {tuple(logps.shape)}"
            )
        mask = response_mask.bool()
    # Responses are ordered best first, so padding may only come after the real ones.
    bad_rows = (mask[:, 1:] & ~mask[:, :-1]).any(dim=1) | (mask.sum(dim=1) < 2)
    if bool(bad_rows.any()):
        row = int(bad_rows.nonzero()[0])
        raise ValueError(
            f"{fn}: row {row} of `response_mask` is {mask[row].int().tolist()}; each row needs at least two "
            "responses, with padding only after them (responses are ordered best first)"
        )
    if not isinstance(lengths, Tensor) or lengths.shape != logps.shape:
        shape = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(f"{fn}: `lengths` must be a tensor of shape {tuple(logps.shape)}, got {shape}")
    # Padded slots may hold any count (often 0); give them 1 so the division stays finite.
    real_lengths = torch.where(mask, lengths, torch.ones_like(lengths))
    scores = logps / _lengths(fn, "lengths", real_lengths, logps)
    return logps, scores, mask


def _ranking_output(rank_loss: Tensor, logps: Tensor, scores: Tensor, mask: Tensor, sft_weight: float) -> LossOutput:
    """Adds the SFT term on the best response (the summed-token NLL) to a ranking loss."""
    nll = -logps[:, 0]
    metrics = {"rank_loss": rank_loss.detach(), "nll": nll.detach(), "accuracy": _ranking_accuracy(scores, mask)}
    return LossOutput(rank_loss + sft_weight * nll, metrics)


def _better_worse_pairs(mask: Tensor) -> Tensor:
    """[batch, i, j]: True where both responses are real and i is ranked above j."""
    n = mask.shape[1]
    i_above_j = torch.triu(torch.ones(n, n, dtype=torch.bool, device=mask.device), diagonal=1)
    return i_above_j & mask.unsqueeze(2) & mask.unsqueeze(1)


def _ranking_accuracy(scores: Tensor, mask: Tensor) -> Tensor:
    """Share of (better, worse) pairs that the length-normalised log-probs already order correctly."""
    pairs = _better_worse_pairs(mask)
    correct = pairs & (scores.unsqueeze(2) > scores.unsqueeze(1))
    return (correct.sum(dim=(1, 2)) / pairs.sum(dim=(1, 2))).to(scores.dtype).detach()


def rrhf_loss(
    policy_logps: Tensor,
    lengths: Tensor,
    *,
    response_mask: Tensor | None = None,
    sft_weight: float = 1.0,
) -> LossOutput:
    """RRHF (Yuan et al. 2023, "Rank Responses to Align Language Models with Human Feedback"): Σ_{i better than j} max(0, p_j - p_i) - w·π_best, p = π/|y|.

    `policy_logps` and `lengths` are [batch, N], best response first; `response_mask`
    marks real responses when rows have fewer than N. The SFT term is the summed-token NLL
    of the best response, as in the paper's L_ft.
    """
    logps, scores, mask = _ranked("rrhf_loss", policy_logps, lengths, response_mask, sft_weight)
    pairs = _better_worse_pairs(mask)
    # hinge[b, i, j] penalises the worse response j scoring above the better response i.
    hinge = torch.relu(scores.unsqueeze(1) - scores.unsqueeze(2))
    rank_loss = torch.where(pairs, hinge, torch.zeros_like(hinge)).sum(dim=(1, 2))
    return _ranking_output(rank_loss, logps, scores, mask, sft_weight)


def pro_loss(
    policy_logps: Tensor,
    lengths: Tensor,
    *,
    response_mask: Tensor | None = None,
    sft_weight: float = 0.0,
) -> LossOutput:
    """PRO (Song et al. 2024, "Preference Ranking Optimization"): -Σ_{k<n} log[exp(p_k) / Σ_{i≥k} exp(p_i)] - w·π_best, p = π/|y|.

    A Plackett-Luce likelihood of the given order: each response must beat every response
    ranked below it. Inputs are laid out as for `rrhf_loss`. The paper's reward-scaled
    temperature is left out; `sft_weight` > 0 adds its SFT term on the best response.
    """
    logps, scores, mask = _ranked("pro_loss", policy_logps, lengths, response_mask, sft_weight)
    n = scores.shape[1]
    later_or_same = torch.triu(torch.ones(n, n, dtype=torch.bool, device=mask.device))  # [k, i]: i >= k
    candidates = later_or_same & mask.unsqueeze(1)  # [b, k, i]
    expanded = scores.unsqueeze(1).expand(-1, n, -1).masked_fill(~candidates, float("-inf"))
    log_share = scores - torch.logsumexp(expanded, dim=2)  # log P(response k wins among those left)
    # The last real response wins a field of one: its term is exactly 0, so skip it.
    last_real = mask.sum(dim=1, keepdim=True) - 1
    positions = torch.arange(n, device=mask.device).unsqueeze(0)
    terms = mask & (positions < last_real)
    listwise = -torch.where(terms, log_share, torch.zeros_like(log_share)).sum(dim=1)
    return _ranking_output(listwise, logps, scores, mask, sft_weight)


# --------------------------------------------------------------------------- unpaired


def kto_reference_point(policy_kl_logps: Tensor, reference_kl_logps: Tensor) -> Tensor:
    """KTO's z0: the batch mean of π - ref on mismatched (prompt, completion) pairs, clamped at 0 and detached."""
    fn = "kto_reference_point"
    policy = _as_float(fn, "policy_kl_logps", policy_kl_logps)
    reference = _as_float(fn, "reference_kl_logps", reference_kl_logps)
    _same_shape(fn, {"policy_kl_logps": policy, "reference_kl_logps": reference}, ndim=1)
    if policy.numel() == 0:
        raise ValueError(f"{fn}: `policy_kl_logps` is empty; the KL estimate needs at least one mismatched pair")
    # KTO treats z0 as a baseline, not something to optimise, so no gradient flows through it.
    return (policy - reference).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: Tensor,
    reference_logps: Tensor,
    is_desirable: Tensor,
    policy_kl_logps: Tensor,
    reference_kl_logps: Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"): λ_D·(1 - σ(β(r - z0))) if desirable else λ_U·(1 - σ(β(z0 - r))), r = π - ref.

    `policy_kl_logps`/`reference_kl_logps` score completions paired with the *wrong* prompt
    (any length, e.g. the batch shifted by one); see `kto_reference_point`. In distributed
    training gather them across ranks first so every rank uses the same z0.
    """
    fn = "kto_loss"
    _check_beta(fn, beta)
    if desirable_weight < 0 or undesirable_weight < 0:
        raise ValueError(f"{fn}: weights must be >= 0, got {desirable_weight}, {undesirable_weight}")
    policy = _as_float(fn, "policy_logps", policy_logps)
    reference = _as_float(fn, "reference_logps", reference_logps)
    _same_shape(fn, {"policy_logps": policy, "reference_logps": reference}, ndim=1)
    if not isinstance(is_desirable, Tensor) or is_desirable.shape != policy.shape or is_desirable.dtype != torch.bool:
        if isinstance(is_desirable, Tensor):
            got = f"{is_desirable.dtype} of shape {tuple(is_desirable.shape)}"
        else:
            got = type(is_desirable).__name__
        raise ValueError(f"{fn}: `is_desirable` must be a bool tensor of shape {tuple(policy.shape)}, got {got}")
    z0 = kto_reference_point(policy_kl_logps, reference_kl_logps).to(policy.dtype)
    logratios = policy - reference
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z0)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratios)))
    losses = torch.where(is_desirable, desirable_losses, undesirable_losses)
    metrics = {
        "reward": (beta * logratios).detach(),
        # Lets the loop average rewards over desirable and undesirable examples separately.
        "is_desirable": is_desirable.to(policy.dtype),
        "kl_reference_point": z0.expand_as(policy),
    }
    return LossOutput(losses, metrics)


# --------------------------------------------------------------------------- reward model


def reward_model_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | None = None,
    center_rewards_coefficient: float = 0.0,
) -> LossOutput:
    """Bradley-Terry reward modelling (Ouyang et al. 2022; margin from Llama 2, centring from Eisenstein et al. 2023): -logσ(r_c - r_r - m) + c·(r_c + r_r)²."""
    fn = "reward_model_loss"
    if center_rewards_coefficient < 0:
        raise ValueError(f"{fn}: `center_rewards_coefficient` must be >= 0, got {center_rewards_coefficient}")
    named = {"chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}
    if margin is not None:
        named["margin"] = margin
    named = {name: _as_float(fn, name, t) for name, t in named.items()}
    _same_shape(fn, named, ndim=1)
    rc, rr = named["chosen_rewards"], named["rejected_rewards"]
    offset = named["margin"] if margin is not None else torch.zeros_like(rc)
    losses = -F.logsigmoid(rc - rr - offset) + center_rewards_coefficient * (rc + rr) ** 2
    return LossOutput(losses, _pair_metrics(rc, rr))
