"""Reward-model training (`alignkit rm`): Bradley-Terry on preference pairs, packed.

Chosen and rejected of every pair in a micro-batch go through the transformer in one packed row;
each reward is read at its sequence's last token. Units are pairs.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field

import torch

from alignkit.config import ConfigError, require_number, to_dict, validate_config
from alignkit.data.errors import RecordError
from alignkit.models.config import ModelConfig
from alignkit.training import preference_losses as pl
from alignkit.training.config import TrainConfig
from alignkit.training.distributed import is_main, on_main
from alignkit.training.loop import TrainResult, train
from alignkit.training.pref_run import PrefDataConfig, load_pref_data, write_summary
from alignkit.training.preference import PrefExample, collate_examples
from alignkit.training.run_dir import start_run


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
    from alignkit.models.loading import load_tokenizer, use_chat_template
    from alignkit.models.reward import load_reward_model

    validate_config(cfg)  # configs built in Python never went through load_config
    out = cfg.train.output_dir
    on_main(lambda: start_run(cfg))  # with several processes, rank 0 alone writes the run's files
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.model.name)
    tokenizer = use_chat_template(tokenizer, cfg.model.chat_template, cfg.model.name)
    # Data first (read exactly like DPO data: pairs, or rankings turned into pairs), then the model.
    train_examples, eval_examples, report = load_pref_data(cfg.data, tokenizer, kind="pairs", seed=cfg.train.seed)
    if is_main():
        with open(os.path.join(out, "data_report.json"), "w") as f:
            json.dump(report, f, indent=2)
    objective = RewardObjective(use_margin=cfg.use_margin, center_coefficient=cfg.center_coefficient)
    objective.check(train_examples + eval_examples)
    if model is None:
        model, _ = load_reward_model(cfg.model.name, dtype=cfg.model.dtype, from_lm=True)
    result = train(model, objective, train_examples, cfg.train, eval_examples=eval_examples,
                   config_dict=to_dict(cfg), on_step=on_step)
    # Every rank returns only once final/ and summary.json are complete.
    on_main(lambda: _save_outputs(model, tokenizer, result, out))
    return result


def _save_outputs(model, tokenizer, result: TrainResult, out: str) -> None:
    final = os.path.join(out, "final")
    model.save_pretrained(final + ".tmp", tokenizer)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(final + ".tmp", final)  # a crash while saving never leaves a complete-looking folder
    write_summary(result, out)
