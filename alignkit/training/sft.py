"""Supervised fine-tuning: the objective and the run that ties data, model and loop together."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Sequence

import torch

from alignkit.config import require, require_choice, require_number, to_dict, validate_config
from alignkit.data.chat import TRAIN_ON
from alignkit.data.formats import load_conversations
from alignkit.data.holdout import data_report, split_eval
from alignkit.data.lengths import OVERLONG_POLICIES
from alignkit.data.mixing import load_mix
from alignkit.data.packing import pack, target_positions
from alignkit.data.readers import DataSpec
from alignkit.data.sft import SFTExample, build_sft_examples
from alignkit.models.config import ModelConfig
from alignkit.training.chunked_logprobs import chunked_scores
from alignkit.training.config import TrainConfig
from alignkit.training.forward import packed_logits
from alignkit.training.losses import token_nll_sum
from alignkit.training.loop import TrainResult, train
from alignkit.training.run import finish_run, prepare_run, save_lm


@dataclass
class SFTDataConfig:
    train: list[DataSpec] = field(default_factory=list)
    eval: list[DataSpec] = field(default_factory=list)
    eval_fraction: float = 0.0  # held out from train when no eval set is given
    max_length: int = 1024
    overlong: str = "truncate"  # truncate | drop
    train_on: str = "all_assistant"  # all_assistant | last_assistant
    skip_bad: bool = False
    mix_total: int = 0  # size of the weighted mix; 0: largest without repeating any dataset

    def validate(self, where: str = "data") -> None:
        validate_data_values(self, where)
        require_choice(where, "train_on", self.train_on, TRAIN_ON)


# A chat template's turn markers alone take several tokens; a shorter limit leaves nothing to learn.
MIN_MAX_LENGTH = 16


def validate_data_values(data, where: str) -> None:
    """The checks SFT and preference data sections share (same field names and meanings)."""
    require(len(data.train) > 0, where, "train", "a list of at least one dataset", data.train)
    require_number(where, "max_length", data.max_length, low=MIN_MAX_LENGTH, whole=True)
    require_choice(where, "overlong", data.overlong, OVERLONG_POLICIES)
    require_number(where, "eval_fraction", data.eval_fraction, low=0, high=1, high_open=True)
    require_number(where, "mix_total", data.mix_total, low=0, whole=True)


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    merge_lora: bool = True  # with LoRA, also write the merged model to final/


class SFTObjective:
    """Next-token NLL on target tokens; logits are computed only at positions with a target, all at once or
    (`loss_chunk_size` N > 0, train.loss_chunk_size) N positions at a time (training/chunked_logprobs.py)."""

    def __init__(self, loss_chunk_size: int = 0):
        self.loss_chunk_size = loss_chunk_size

    def collate(self, examples: Sequence[SFTExample]) -> dict:
        batch = pack([(e.input_ids, e.labels) for e in examples])
        batch["num_units"] = batch["num_targets"]
        return batch

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        keep = target_positions(batch["targets"])
        targets = batch["targets"][0, keep]
        if self.loss_chunk_size:
            scores = chunked_scores(model, batch, keep, targets, chunk=self.loss_chunk_size)
            if scores is not None:  # None: a model whose head cannot be split takes the plain path
                return -scores.logprobs.sum(), {}
        return token_nll_sum(packed_logits(model, batch, keep), targets), {}


def load_sft_data(cfg: SFTDataConfig, tokenizer, *, seed: int):
    """(train examples, eval examples, report dict) under the config's policies; prints a one-line summary."""
    validate_config(cfg, "data")
    load = partial(load_conversations, skip_bad=cfg.skip_bad)
    convs, skips, mix = load_mix(cfg.train, load, seed=seed, total=cfg.mix_total or None)
    build = partial(build_sft_examples, tokenizer=tokenizer, max_length=cfg.max_length, overlong=cfg.overlong,
                    train_on=cfg.train_on, skip_bad=cfg.skip_bad, report=skips)
    train_examples, lengths = build(convs)
    eval_examples: list[SFTExample] = []
    if cfg.eval:
        eval_convs, eval_skips = load_conversations(cfg.eval, skip_bad=cfg.skip_bad)
        skips.merge(eval_skips)
        eval_examples, _ = build(eval_convs)
    else:
        train_examples, eval_examples = split_eval(train_examples, cfg.eval_fraction, seed)
    return train_examples, eval_examples, data_report(train_examples, eval_examples, skips, lengths, mix)


def run_sft(cfg: SFTConfig, *, model=None, tokenizer=None, on_step=None) -> TrainResult:
    """Load model and data, train, save the final model in the Hugging Face layout under output_dir/final."""
    from alignkit.models.loading import load_model
    from alignkit.models.lora import apply_lora

    ctx = prepare_run(cfg, partial(load_sft_data, cfg.data, seed=cfg.train.seed), tokenizer=tokenizer)
    if model is None:
        model, _ = load_model(cfg.model.name, dtype=cfg.model.dtype, quantization=cfg.model.quantization_settings())
    if cfg.model.lora.enabled:
        model = apply_lora(model, cfg.model.lora, seed=cfg.train.seed)
    objective = SFTObjective(cfg.train.loss_chunk_size)
    result = train(model, objective, ctx.train_examples, cfg.train, eval_examples=ctx.eval_examples,
                   config_dict=to_dict(cfg), on_step=on_step)
    finish_run(ctx, result, partial(save_lm, model, ctx.tokenizer, lora=cfg.model.lora.enabled, merge=cfg.merge_lora))
    return result
