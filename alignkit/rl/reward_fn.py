"""A reward from alignkit.rewards as the rollout source's reward function.

The rollout source scores (prompt messages, completion text, prompt metadata) triples and wants one float
each; a `Reward` scores `Sample`s into a `RewardResult` that also counts failures and keeps each
component's scores. `RolloutReward` converts between the two and keeps the latest result's metrics for
the training log, and the reward's own state (running normalisation) for checkpoints.
"""
from __future__ import annotations

from collections.abc import Sequence

from alignkit.rewards.interface import Reward, Sample


class RolloutReward:
    def __init__(self, reward: Reward, tokenizer=None, *, count_tokens: bool = False):
        self.reward, self.tokenizer, self.count_tokens = reward, tokenizer, count_tokens
        self.last_metrics: dict[str, float] = {}

    def _num_tokens(self, text: str) -> int | None:
        # The length penalty needs a token count; the triples carry text only, so it is re-encoded
        # (which can differ by a token from what was generated, e.g. the EOS).
        if not self.count_tokens or self.tokenizer is None:
            return None
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, triples: Sequence[tuple[list[dict], str, dict]]) -> list[float]:
        samples = [Sample(list(messages), text, dict(metadata or {}), self._num_tokens(text))
                   for messages, text, metadata in triples]
        result = self.reward.score(samples)
        self.last_metrics = {k: v for k, v in result.metrics("reward").items() if k != "reward"}
        return list(result.scores)

    def state_dict(self) -> dict:
        state = getattr(self.reward, "state_dict", None)
        return {"reward": state() if callable(state) else None, "metrics": dict(self.last_metrics)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("reward") is not None and hasattr(self.reward, "load_state_dict"):
            self.reward.load_state_dict(state["reward"])
        self.last_metrics = dict(state.get("metrics") or {})
