"""KL pieces for RL: per-token estimators and the KL-coefficient controllers.

The estimators follow Schulman's "Approximating KL divergence" note. Tokens are sampled from the
policy, so with r = p_ref(x) / p_policy(x) the estimate of KL(policy || reference) is one of
  k1 = -log r                 (unbiased, high variance, can be negative per token),
  k2 = 0.5 (log r)^2          (biased, low variance, >= 0),
  k3 = (r - 1) - log r        (unbiased, low variance, >= 0).
They take log-probabilities of the sampled tokens, so the same functions give the PPO "approx KL"
between the old and the new policy: pass the sampler's (old) log-probs first.
"""
from __future__ import annotations

from torch import Tensor

ESTIMATORS = ("k1", "k2", "k3")


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """log p - log p_ref per token."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """0.5 (log p - log p_ref)^2 per token."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """exp(log p_ref - log p) - 1 - (log p_ref - log p) per token."""
    log_r = ref_logp - logp
    return log_r.exp() - 1 - log_r


def token_kl(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(sampler || other); `logp` are the sampler's log-probs of its tokens."""
    if estimator == "k1":
        return kl_k1(logp, ref_logp)
    if estimator == "k2":
        return kl_k2(logp, ref_logp)
    if estimator == "k3":
        return kl_k3(logp, ref_logp)
    raise ValueError(f"estimator must be one of {ESTIMATORS}, not {estimator!r}")


class FixedKLController:
    """A constant KL coefficient, with the same interface as the adaptive one."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """The proportional controller of Ziegler et al. (2019), "Fine-Tuning Language Models from Human
    Preferences": e = clip(KL / target - 1, -0.2, 0.2), beta <- beta (1 + e n_steps / horizon).

    `n_steps` is how many samples (sequences) the measured KL came from since the last update, so the
    coefficient moves at a rate set by `horizon` samples, whatever the batch size. The clip keeps one
    noisy KL reading from moving beta by more than 20% x n_steps / horizon."""

    def __init__(self, init_value: float, target: float, horizon: int, clip: float = 0.2):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got {target}, {horizon}")
        self.value = float(init_value)
        self.target = float(target)
        self.horizon = int(horizon)
        self.clip = float(clip)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -self.clip), self.clip)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


__all__ = ["ESTIMATORS", "kl_k1", "kl_k2", "kl_k3", "token_kl", "FixedKLController", "AdaptiveKLController"]
