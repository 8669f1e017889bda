"""Post-processing of a reward, in this order: a length penalty, normalisation, clipping.

The penalty is in the reward's own units, so it comes first; normalisation then rescales the total
(running mean/std over the whole run, kept in checkpoints through `state_dict`, or per batch), and
clipping bounds what the optimiser finally sees.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from alignkit.config import require, require_choice, require_number
from alignkit.rewards.interface import Reward, RewardResult, Sample

NORMALIZE = ("none", "running", "batch")


@dataclass
class RewardShaping:
    normalize: str = "none"  # none | running (mean/std over the run so far) | batch (this batch's mean/std)
    length_penalty: float = 0.0  # subtracted per completion token (past length_target when that is set)
    length_target: int = 0  # tokens a completion may use before the penalty starts; 0: every token counts
    clip_low: float | None = None  # lower bound of the final reward; null: none
    clip_high: float | None = None  # upper bound of the final reward; null: none
    eps: float = 1e-8  # added to the standard deviation when normalising

    def validate(self, where: str = "") -> None:
        require_choice(where, "normalize", self.normalize, NORMALIZE)
        require_number(where, "length_penalty", self.length_penalty, low=0)
        require_number(where, "length_target", self.length_target, low=0, whole=True)
        for key in ("clip_low", "clip_high"):
            if getattr(self, key) is not None:
                require_number(where, key, getattr(self, key), low=-math.inf)
        if self.clip_low is not None and self.clip_high is not None:
            require(self.clip_low < self.clip_high, where, "clip_high", f"> clip_low ({self.clip_low})",
                    self.clip_high)
        require_number(where, "eps", self.eps, low=0, low_open=True)

    @property
    def active(self) -> bool:
        return (self.normalize != "none" or self.length_penalty > 0 or self.clip_low is not None
                or self.clip_high is not None)


class RunningMoments:
    """Count, mean and sum of squared deviations of every value seen, merged batch by batch (Chan et al.),
    which stays accurate over millions of values where a running sum of squares would not."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: Sequence[float]) -> None:
        n = len(values)
        if n == 0:
            return
        batch_mean = sum(values) / n
        batch_m2 = sum((v - batch_mean) ** 2 for v in values)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta ** 2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


def _batch_moments(values: Sequence[float]) -> tuple[float, float]:
    moments = RunningMoments()
    moments.update(values)
    return moments.mean, moments.std


class ShapedReward:
    """`reward` with `shaping` applied; the result keeps the scores from before shaping in `unshaped`."""

    def __init__(self, reward: Reward, shaping: RewardShaping | None = None):
        shaping = shaping or RewardShaping()
        shaping.validate("reward_shaping")
        self.reward, self.shaping, self.name = reward, shaping, reward.name
        self.moments = RunningMoments()

    def score(self, samples: Sequence[Sample]) -> RewardResult:
        result = self.reward.score(samples)
        values = self.apply(result.scores, [s.num_tokens for s in samples])
        return RewardResult(values, result.failures, result.components, result.counts, unshaped=result.scores)

    def apply(self, scores: Sequence[float], num_tokens: Sequence[int | None]) -> list[float]:
        """Shape one batch of scores; with running normalisation this also updates the statistics."""
        s = self.shaping
        values = [float(v) for v in scores]
        if s.length_penalty > 0:
            if any(n is None for n in num_tokens):
                raise ValueError("the length penalty needs each sample's num_tokens")
            values = [v - s.length_penalty * max(0, n - s.length_target) for v, n in zip(values, num_tokens)]
        if s.normalize == "running":
            # The batch joins the statistics first, so the very first batch is normalised by itself.
            self.moments.update(values)
            mean, std = self.moments.mean, self.moments.std
            values = [(v - mean) / (std + s.eps) for v in values]
        elif s.normalize == "batch":
            mean, std = _batch_moments(values)
            values = [(v - mean) / (std + s.eps) for v in values]
        low = -math.inf if s.clip_low is None else s.clip_low
        high = math.inf if s.clip_high is None else s.clip_high
        return [min(max(v, low), high) for v in values]

    def state_dict(self) -> dict:
        return {"moments": self.moments.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.moments.load_state_dict(state["moments"])
