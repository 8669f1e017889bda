"""A reward from alignkit.rewards as the rollout source's reward function.

The rollout source hands over `rewards.interface.Sample`s (with the generated token count the length
penalty reads, so nothing is re-encoded) and wants one float each; a `Reward` returns a `RewardResult`
that also counts failures and keeps each component's scores. `RolloutReward` keeps the latest result's
metrics for the training log, and the reward's own state (running normalisation) for checkpoints.
"""
from __future__ import annotations

from collections.abc import Sequence

from alignkit.rewards.interface import Reward, Sample


class RolloutReward:
    def __init__(self, reward: Reward):
        self.reward = reward
        self.last_metrics: dict[str, float] = {}

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        result = self.reward.score(list(samples))
        self.last_metrics = {k: v for k, v in result.metrics("reward").items() if k != "reward"}
        return list(result.scores)

    def state_dict(self) -> dict:
        state = getattr(self.reward, "state_dict", None)
        return {"reward": state() if callable(state) else None, "metrics": dict(self.last_metrics)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("reward") is not None and hasattr(self.reward, "load_state_dict"):
            self.reward.load_state_dict(state["reward"])
        self.last_metrics = dict(state.get("metrics") or {})
