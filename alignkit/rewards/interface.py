"""What every reward is: `Sample`s in, a `RewardResult` (one score and one failure slot per sample) out.

A sample that cannot be scored (a judge reply without a verdict, a record without the reference
answer the reward needs) is never given a guessed value: the reward sets its failure reason and
gives it the reward's configured `failure_reward`, and the result counts it, so a run can report
how often that happened.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence


@dataclass(frozen=True)
class Sample:
    """One completion to score: the prompt it answers, its text, and the prompt record's extra fields
    (a reference answer, IFEval's instruction_id_list/kwargs, the demo's `format`, ...)."""

    prompt: list[dict]
    completion: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    num_tokens: int | None = None  # completion length in policy tokens; the length penalty needs it

    def last_user_text(self) -> str:
        return next((m["content"] for m in reversed(self.prompt) if m.get("role") == "user"), "")


@dataclass
class RewardResult:
    scores: list[float]
    failures: list[str | None]  # why each sample could not be scored; None where it was
    components: dict[str, RewardResult] = field(default_factory=dict)  # a combination's parts, unweighted
    counts: dict[str, int] = field(default_factory=dict)  # other events worth logging (e.g. inputs cut for length)
    unshaped: list[float] | None = None  # scores before normalisation, length penalty and clipping

    def __post_init__(self) -> None:
        if len(self.scores) != len(self.failures):
            raise ValueError(f"RewardResult: {len(self.scores)} scores but {len(self.failures)} failure slots")

    @property
    def num_failures(self) -> int:
        return sum(reason is not None for reason in self.failures)

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Batch means and failure counts, per component too, under `prefix`, for the training log."""
        out = {prefix: _mean(self.scores), f"{prefix}_failures": float(self.num_failures)}
        if self.unshaped is not None:
            out[f"{prefix}_unshaped"] = _mean(self.unshaped)
        for key, value in self.counts.items():
            out[f"{prefix}_{key}"] = float(value)
        for name, part in self.components.items():
            out.update(part.metrics(f"{prefix}/{name}"))
        return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


class Reward(Protocol):
    name: str

    def score(self, samples: Sequence[Sample]) -> RewardResult:
        """One score per sample, in order; failures get the reward's configured value and a reason."""
        ...


def from_outcomes(outcomes: Sequence[tuple[float | None, str | None]], failure_reward: float) -> RewardResult:
    """A result from per-sample (score, failure reason) pairs; a failed sample scores `failure_reward`."""
    scores, failures = [], []
    for value, reason in outcomes:
        if reason is None and (value is None or not math.isfinite(value)):
            reason = f"score {value!r} is not a finite number"
        failures.append(reason)
        scores.append(float(failure_reward) if reason is not None else float(value))
    return RewardResult(scores, failures)


class CombinedReward:
    """The weighted sum of several rewards; the result keeps every component's own (unweighted) scores."""

    def __init__(self, parts: Sequence[tuple[Reward, float]], name: str = "reward"):
        if not parts:
            raise ValueError("CombinedReward needs at least one reward")
        names = [reward.name for reward, _ in parts]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"rewards named {repeated} more than once; give each a distinct name")
        self.parts = [(reward, float(weight)) for reward, weight in parts]
        self.name = name

    def score(self, samples: Sequence[Sample]) -> RewardResult:
        totals = [0.0] * len(samples)
        reasons: list[list[str]] = [[] for _ in samples]
        components = {}
        for reward, weight in self.parts:
            result = reward.score(samples)
            if len(result.scores) != len(samples):
                raise RuntimeError(f"reward {reward.name!r} returned {len(result.scores)} scores "
                                   f"for {len(samples)} samples")
            components[reward.name] = result
            for i, (value, reason) in enumerate(zip(result.scores, result.failures)):
                totals[i] += weight * value
                if reason is not None:
                    reasons[i].append(f"{reward.name}: {reason}")
        return RewardResult(totals, ["; ".join(r) if r else None for r in reasons], components)
