"""`alignkit pref`: load model and preference data, attach reference log-probs, train, save.

One config for every preference loss: `loss=` picks the objective (pairwise, ranking, KTO or
control-token SFT), the other top-level keys are that loss's hyperparameters (see
`PrefLossConfig`), and the model / data / train sections are as in SFT.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from alignkit.config import ConfigError, require, require_choice, require_number, to_dict, validate_config
from alignkit.data.control import ControlConfig, load_control
from alignkit.data.holdout import data_report, split_eval
from alignkit.data.mixing import load_mix
from alignkit.data.pref_examples import PrefExample, build_examples, feedback_items, pair_items, ranking_items
from alignkit.data.preference import PAIR_RULES, load_feedback, load_pairs, load_rankings
from alignkit.data.readers import DataSpec
from alignkit.models.config import ModelConfig
from alignkit.training.batch_source import examples_visited
from alignkit.training.config import TrainConfig
from alignkit.training.distributed import main_first
from alignkit.training.loop import TrainResult, train
from alignkit.training.preference import (PAIR_LOSSES, RANKING_LOSSES, PairwiseObjective, PrefLossConfig,
                                          RankingObjective)
from alignkit.training.reference import LiveReference, attach_reference
from alignkit.training.run import finish_run, prepare_run, save_lm
from alignkit.training.sft import validate_data_values


@dataclass
class PrefDataConfig:
    train: list[DataSpec] = field(default_factory=list)  # preference files (pairs, rankings or feedback)
    eval: list[DataSpec] = field(default_factory=list)  # held-out preference files (metrics only)
    eval_fraction: float = 0.0  # held out from train when no eval set is given
    max_length: int = 1024  # tokens of prompt + response; longer ones follow `overlong`
    overlong: str = "truncate"  # truncate: cut the response's end | drop: drop the whole example (both reported)
    skip_bad: bool = False  # skip and report bad records instead of stopping at the first
    pair_rule: str = "all_pairs"  # rankings to pairs: all_pairs | best_vs_rest | best_vs_worst | margin
    pair_threshold: float = 0.0  # pair_rule=margin: keep pairs whose score difference is above this
    mix_total: int = 0  # size of the weighted mix; 0: largest without repeating any dataset

    def validate(self, where: str = "data") -> None:
        validate_data_values(self, where)
        require_choice(where, "pair_rule", self.pair_rule, PAIR_RULES)
        require_number(where, "pair_threshold", self.pair_threshold, low=0)
        require(not self.pair_threshold or self.pair_rule == "margin", where, "pair_threshold",
                "0 unless pair_rule is margin", self.pair_threshold)


@dataclass
class PrefConfig(PrefLossConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: PrefDataConfig = field(default_factory=PrefDataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6))  # TRL DPOConfig default lr
    control: ControlConfig = field(default_factory=ControlConfig)  # loss=control only
    merge_lora: bool = True  # with LoRA, also write the merged model to final/ (the adapter goes to final/adapter)

    def validate(self, where: str = "") -> None:
        """The loss settings (the model, data and train sections validate themselves: see validate_config)."""
        self.validate_loss(where)
        if self.loss == "control":
            self.control.check()
        if self.loss == "kto" and self.train.batch_size < 2:
            raise ConfigError("loss=kto needs train.batch_size >= 2: its KL baseline is a mean over the micro-batch")


def data_kind(loss: str) -> str:
    """What a loss trains on: rankings (kept whole), feedback (KTO) or pairs (everything else)."""
    return "rankings" if loss in RANKING_LOSSES else "feedback" if loss == "kto" else "pairs"


def _load_items(data: PrefDataConfig, kind: str, specs, seed: int, *, mixed: bool):
    """(build_examples items, skip report, mix summary or None) for one kind of data."""
    if kind == "rankings":
        load, to_items = partial(load_rankings, skip_bad=data.skip_bad), ranking_items
    elif kind == "feedback":
        load, to_items = partial(load_feedback, skip_bad=data.skip_bad), feedback_items
    else:
        load = partial(load_pairs, rule=data.pair_rule, threshold=data.pair_threshold, skip_bad=data.skip_bad)
        to_items = pair_items
    if mixed:
        records, skips, mix = load_mix(specs, load, seed=seed, total=data.mix_total or None)
        return to_items(records), skips, mix
    records, skips = load(specs)
    return to_items(records), skips, None


def load_pref_data(data: PrefDataConfig, tokenizer, *, kind: str = "pairs",
                   seed: int = 0) -> tuple[list[PrefExample], list[PrefExample], dict]:
    """(train examples, eval examples, report dict); `kind` is pairs, rankings or feedback (see data_kind)."""
    validate_config(data, "data")
    build = partial(build_examples, tokenizer=tokenizer, max_length=data.max_length, overlong=data.overlong,
                    skip_bad=data.skip_bad)
    items, skips, mix = _load_items(data, kind, data.train, seed, mixed=True)
    train_examples, lengths = build(items, report=skips)
    eval_examples: list[PrefExample] = []
    if data.eval:
        eval_items, eval_skips, _ = _load_items(data, kind, data.eval, seed, mixed=False)
        eval_examples, eval_lengths = build(eval_items, report=eval_skips)
        skips.merge(eval_skips)
        lengths.truncated += eval_lengths.truncated
        lengths.dropped += eval_lengths.dropped
        lengths.dropped_where += eval_lengths.dropped_where
    else:
        train_examples, eval_examples = split_eval(train_examples, data.eval_fraction, seed)
    return train_examples, eval_examples, data_report(train_examples, eval_examples, skips, lengths, mix)


def load_control_data(cfg: PrefConfig, tokenizer, *, seed: int) -> tuple[list, list, dict]:
    """SFT examples with control text in the prompt (loss=control)."""
    from alignkit.data.sft import build_sft_examples

    data = cfg.data
    load = partial(load_control, cfg=cfg.control, skip_bad=data.skip_bad)
    convs, skips, mix = load_mix(data.train, load, seed=seed, total=data.mix_total or None)
    # last_assistant: earlier assistant turns are prompt context, only the response is learnt.
    build = partial(build_sft_examples, tokenizer=tokenizer, max_length=data.max_length, overlong=data.overlong,
                    train_on="last_assistant", skip_bad=data.skip_bad, report=skips)
    train_examples, lengths = build(convs)
    if data.eval:
        eval_convs, eval_skips = load(data.eval)
        skips.merge(eval_skips)
        eval_examples, _ = build(eval_convs)
    else:
        train_examples, eval_examples = split_eval(train_examples, data.eval_fraction, seed)
    return train_examples, eval_examples, data_report(train_examples, eval_examples, skips, lengths, mix,
                                                      noun="conversations")


def make_objective(cfg: PrefLossConfig, live: LiveReference | None = None, *, loss_chunk_size: int = 0):
    """The objective of `cfg.loss`; `loss_chunk_size` is train.loss_chunk_size (0: all logits at once)."""
    if cfg.loss in PAIR_LOSSES:
        return PairwiseObjective(cfg, live, loss_chunk_size=loss_chunk_size)
    if cfg.loss in RANKING_LOSSES:
        return RankingObjective(cfg, loss_chunk_size=loss_chunk_size)
    if cfg.loss == "kto":
        from alignkit.training.kto import KTOObjective

        return KTOObjective(cfg, live, loss_chunk_size=loss_chunk_size)
    from alignkit.training.sft import SFTObjective

    return SFTObjective(loss_chunk_size)


def prepare_reference(cfg: PrefConfig, model, tokenizer, train_examples: list[PrefExample],
                      eval_examples: list[PrefExample] = (), reference_model=None) -> LiveReference | None:
    """Attach cached reference log-probs (precomputed) or return the per-step reference (live). The reference
    is `model` as it starts, or `reference_model` when given (iterative DPO's first model, in a later round).
    Precomputed log-probs are computed for the training examples the run's steps will visit (a 10-step run
    on a large file pays for 10 steps) and every eval example."""
    if not cfg.needs_reference:
        return None
    reference = model if reference_model is None else reference_model
    if cfg.reference == "live":
        return LiveReference(reference, cfg.train.precision, chunk=cfg.train.loss_chunk_size)
    train_cfg = cfg.train
    examples = list(train_examples) + list(eval_examples)
    needed = None
    if train_cfg.max_steps and train_examples:
        needed = examples_visited(train_examples, batch_size=train_cfg.batch_size, grad_accum=train_cfg.grad_accum,
                                  seed=train_cfg.seed, shuffle=train_cfg.shuffle, steps=train_cfg.max_steps)
        needed |= set(range(len(train_examples), len(examples)))
    # Rank 0 computes and caches the log-probs; the other ranks then load them rather than write the same file.
    # The cache key holds a fingerprint of the reference's weights, so another reference never reuses them.
    report = main_first(lambda: attach_reference(
        reference, examples, model_id=cfg.model.name, template=tokenizer.chat_template or "",
        max_length=cfg.data.max_length, cache_dir=cfg.reference_cache, batch_size=cfg.reference_batch_size,
        precision=cfg.train.precision, needed=needed, progress=cfg.train.progress))
    print(report.summary(), flush=True)
    return None


def load_run_data(cfg: PrefConfig, tokenizer) -> tuple[list, list, dict]:
    """(train examples, eval examples, report dict) of the data the configured loss trains on."""
    if cfg.loss == "control":
        return load_control_data(cfg, tokenizer, seed=cfg.train.seed)
    return load_pref_data(cfg.data, tokenizer, kind=data_kind(cfg.loss), seed=cfg.train.seed)


def run_pref(cfg: PrefConfig, *, model=None, tokenizer=None, on_step=None, reference_model=None) -> TrainResult:
    """Train with the configured preference loss; the final model goes to output_dir/final (HF layout). The
    reference is the starting model, or `reference_model` (a frozen model with the same tokenizer)."""
    from alignkit.models.loading import load_model
    from alignkit.models.lora import apply_lora, merge_lora

    ctx = prepare_run(cfg, partial(load_run_data, cfg), tokenizer=tokenizer)
    if model is None:
        model, _ = load_model(cfg.model.name, dtype=cfg.model.dtype, quantization=cfg.model.quantization_settings())
    # An adapter from an earlier stage is folded in: it is part of the starting (and reference) model.
    model = merge_lora(model)
    if cfg.model.lora.enabled:
        model = apply_lora(model, cfg.model.lora, seed=cfg.train.seed)
    live = None if cfg.loss == "control" else prepare_reference(cfg, model, ctx.tokenizer, ctx.train_examples,
                                                                  ctx.eval_examples, reference_model)
    objective = make_objective(cfg, live, loss_chunk_size=cfg.train.loss_chunk_size)
    result = train(model, objective, ctx.train_examples, cfg.train, eval_examples=ctx.eval_examples,
                   config_dict=to_dict(cfg), on_step=on_step)
    finish_run(ctx, result, partial(save_lm, model, ctx.tokenizer, lora=cfg.model.lora.enabled, merge=cfg.merge_lora))
    return result
