"""A trained reward model as a reward: the prompt and completion are scored exactly as `alignkit score`
and rm-eval score them (`models.reward.conversation_ids` then `score_sequences`), with the reward
model's own tokenizer and chat template, so a policy with another tokenizer can use it too.
"""
from __future__ import annotations

from typing import Sequence

from alignkit.rewards.interface import RewardResult, Sample


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class RewardModelReward:
    """Scores with a reward-model folder saved by `alignkit rm` (loaded on first use, so building the
    reward from a config costs nothing), or with a model and tokenizer already in memory.

    A conversation the reward model's chat template cannot render is a failure with
    `failure_reward`; one longer than `max_length` tokens is cut from the left and counted.
    """

    def __init__(self, name: str = "rm", *, path: str | None = None, model=None, tokenizer=None,
                 dtype: str = "fp32", device: str = "", batch_size: int = 16, max_length: int = 2048,
                 failure_reward: float = 0.0):
        if (path is None) == (model is None):
            raise ValueError("RewardModelReward needs either a folder `path` or a `model` with its `tokenizer`")
        if model is not None and tokenizer is None:
            raise ValueError("RewardModelReward: a `model` needs its `tokenizer`")
        self.name, self.path, self.model, self.tokenizer = name, path, model, tokenizer
        self.dtype, self.device = dtype, device
        self.batch_size, self.max_length, self.failure_reward = batch_size, max_length, failure_reward

    def _loaded(self):
        if self.model is None:
            from alignkit.models.reward import load_reward_model

            model, self.tokenizer = load_reward_model(self.path, dtype=self.dtype)
            self.model = model.to(self.device or default_device())
            self.model.requires_grad_(False)  # frozen: only ever scores
        return self.model, self.tokenizer

    def score(self, samples: Sequence[Sample]) -> RewardResult:
        from alignkit.models.reward import conversation_ids, score_sequences

        model, tokenizer = self._loaded()
        failures: list[str | None] = [None] * len(samples)
        sequences, scored, truncated = [], [], 0
        for i, sample in enumerate(samples):
            messages = list(sample.prompt) + [{"role": "assistant", "content": sample.completion}]
            try:
                ids, cut = conversation_ids(tokenizer, messages, self.max_length)
            except ValueError as error:  # the template rejects the conversation (TemplateError is one)
                failures[i] = f"reward model template: {' '.join(str(error).split())}"
                continue
            sequences.append(ids)
            scored.append(i)
            truncated += cut
        scores = [float(self.failure_reward)] * len(samples)
        for i, value in zip(scored, score_sequences(model, sequences, batch_size=self.batch_size)):
            scores[i] = value
        return RewardResult(scores, failures, counts={"truncated": truncated})
