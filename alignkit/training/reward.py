"""Reward-model training (`alignkit rm`): Bradley-Terry on preference pairs, packed.

Chosen and rejected of every pair in a micro-batch go through the transformer in one packed row;
each reward is read at its sequence's last token. Units are pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch

from alignkit.config import ConfigError, require_number, to_dict
from alignkit.data.errors import RecordError
from alignkit.data.pref_examples import PrefExample
from alignkit.models.config import ModelConfig
from alignkit.training import preference_losses as pl
from alignkit.training.config import TrainConfig
from alignkit.training.loop import TrainResult, train
from alignkit.training.pref_run import PrefDataConfig, load_pref_data
from alignkit.training.preference import collate_examples
from alignkit.training.run import finish_run, prepare_run


@dataclass
class RMConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # a causal LM (gets a new head) or a reward model
    data: PrefDataConfig = field(default_factory=PrefDataConfig)  # pairs, or rankings through data.pair_rule
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5))
    use_margin: bool = False  # subtract the data's margin (or score_chosen - score_rejected) inside the sigmoid
    center_coefficient: float = 0.0  # weight of (r_chosen + r_rejected)^2, keeps rewards centred at 0

    def validate(self, where: str = "") -> None:
        if self.model.lora.enabled:
            raise ConfigError("model.lora.enabled: LoRA is not supported for reward models (the head must train fully)")
        require_number(where, "center_coefficient", self.center_coefficient, low=0)


class RewardObjective:
    """Bradley-Terry loss per pair. Logged per pair: chosen_reward, rejected_reward, reward_margin, accuracy."""

    def __init__(self, *, use_margin: bool = False, center_coefficient: float = 0.0):
        self.use_margin, self.center_coefficient = use_margin, center_coefficient

    def check(self, examples: list[PrefExample]) -> None:
        """With use_margin, every pair needs a margin: the first without one is a RecordError."""
        if not self.use_margin:
            return
        missing = next((ex for ex in examples if ex.margin is None), None)
        if missing is not None:
            raise RecordError("margin", "missing, and use_margin is on (give 'margin', or 'score_chosen' and "
                                        "'score_rejected')", path=missing.source, line=missing.line)

    def collate(self, examples: list[PrefExample]) -> dict:
        self.check(examples)
        return collate_examples(examples)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        rewards = model(batch["input_ids"].to(device), batch["position_ids"].to(device), batch["seq_lens"])
        margin = batch["margin"].to(device) if self.use_margin else None
        out = pl.reward_model_loss(rewards[0::2], rewards[1::2], margin=margin,
                                   center_rewards_coefficient=self.center_coefficient)
        return out.losses.sum(), {name: float(value.sum()) for name, value in out.metrics.items()}


def run_rm(cfg: RMConfig, *, model=None, tokenizer=None, on_step=None) -> TrainResult:
    """Train a reward model; it is saved to output_dir/final as a *ForSequenceClassification folder."""
    from alignkit.models.reward import load_reward_model

    # Data is read exactly like DPO data: pairs, or rankings turned into pairs.
    ctx = prepare_run(cfg, partial(load_pref_data, cfg.data, kind="pairs", seed=cfg.train.seed), tokenizer=tokenizer)
    objective = RewardObjective(use_margin=cfg.use_margin, center_coefficient=cfg.center_coefficient)
    objective.check(ctx.train_examples + ctx.eval_examples)
    if model is None:
        model, _ = load_reward_model(cfg.model.name, dtype=cfg.model.dtype, from_lm=True)
    result = train(model, objective, ctx.train_examples, cfg.train, eval_examples=ctx.eval_examples,
                   config_dict=to_dict(cfg), on_step=on_step)
    finish_run(ctx, result, lambda folder: model.save_pretrained(folder, ctx.tokenizer))
    return result
