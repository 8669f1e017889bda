"""A reward from alignkit.rewards as the rollout source's reward function.

The rollout source hands over `rewards.interface.Sample`s (with the generated token count the length
penalty reads, so nothing is re-encoded) and wants one float each; a `Reward` returns a `RewardResult`
that also counts failures and keeps each component's scores. `RolloutReward` keeps the latest result's
metrics for the training log, and the reward's own state (running normalisation) for checkpoints.

Under several processes each scores its own samples, and the metrics are merged over all of them
(`merge_metrics`): failure and other counts summed, means weighted by each process's number of samples, so the
log reads as one process scoring them all. Running or batch normalisation of the rewards is refused there
(rl/run.py): its statistics would be each process's own.
"""
from __future__ import annotations

from collections.abc import Sequence

from alignkit.rewards.interface import Reward, RewardResult, Sample
from alignkit.training.distributed import all_gather_objects


def count_keys(result: RewardResult, prefix: str = "reward") -> set[str]:
    """The keys of `result.metrics(prefix)` that are counts (summed over processes), not batch means."""
    keys = {f"{prefix}_failures", *(f"{prefix}_{key}" for key in result.counts)}
    for name, part in result.components.items():
        keys |= count_keys(part, f"{prefix}/{name}")
    return keys


def merge_metrics(parts: Sequence[tuple[int, dict[str, float], set[str]]]) -> dict[str, float]:
    """One metrics dict from every process's (samples, metrics, count keys): counts summed, means weighted by
    samples (a key a process lacks counts as absent there, not as zero)."""
    counts = set().union(*(keys for _, _, keys in parts))
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for _, metrics, _ in parts for k in metrics):
        present = [(n, m[key]) for n, m, _ in parts if key in m]
        if key in counts:
            out[key] = float(sum(v for _, v in present))
        else:
            total = sum(n for n, _ in present)
            out[key] = float(sum(n * v for n, v in present) / total) if total else float("nan")
    return out


class RolloutReward:
    def __init__(self, reward: Reward):
        self.reward = reward
        self.last_metrics: dict[str, float] = {}

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        result = self.reward.score(list(samples))
        metrics = result.metrics("reward")
        parts = all_gather_objects((len(result.scores), metrics, count_keys(result)))
        if len(parts) > 1:
            metrics = merge_metrics(parts)
        self.last_metrics = {k: v for k, v in metrics.items() if k != "reward"}
        return list(result.scores)

    def state_dict(self) -> dict:
        state = getattr(self.reward, "state_dict", None)
        return {"reward": state() if callable(state) else None, "metrics": dict(self.last_metrics)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("reward") is not None and hasattr(self.reward, "load_state_dict"):
            self.reward.load_state_dict(state["reward"])
        self.last_metrics = dict(state.get("metrics") or {})
