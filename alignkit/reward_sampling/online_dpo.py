"""`alignkit online-dpo`: online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI
Feedback"; TRL's former OnlineDPOTrainer). At every optimizer step the policy as it is then samples k >= 2
responses per prompt, a reward (reward model, verifier, judge: any `alignkit.rewards` source) ranks them,
and DPO, or any other pairwise loss alignkit has (ipo, slic, simpo, ...), trains on the pairs.

It is the one training loop with a batch source, as online RL is: `online_pairs.OnlinePairSource` samples,
scores, pairs and collates each step; `PairwiseObjective` is the loss `alignkit dpo` trains with. The
reference of the loss is the starting policy, frozen (or the LoRA policy with its adapter off): its
log-probs are computed when the pairs are made, on the same packed micro-batches the loss sees.

Logged per step, beside the loss's own metrics (chosen_reward, rejected_reward, reward_margin and accuracy
are the loss's implicit rewards): reward_mean of the samples (and each reward part's, `reward/<name>`),
pair_reward_margin (chosen minus rejected sample reward), pairs, tied_prompts, failed_samples,
overlong_pairs, truncated_rate, gen_seconds, score_seconds, reference_seconds. pairs.jsonl in the run folder
keeps the first `log_pairs` pairs of each step. With `heldout` prompt files the greedy answers to them are
scored before and after training (candidates.heldout_eval) into heldout.json.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import partial

from alignkit.atomic_write import write_json_atomic
from alignkit.config import (
    require,
    require_choice,
    require_number,
    to_dict,
)
from alignkit.data.preference import PAIR_RULES
from alignkit.data.readers import DataSpec
from alignkit.models.config import ModelConfig
from alignkit.reward_sampling.candidates import PolicySampler, SamplingConfig, heldout_eval
from alignkit.reward_sampling.online_pairs import OnlinePairSource
from alignkit.rewards.spec import RewardSpec, build_reward, validate_reward_specs
from alignkit.data.prompts import read_prompt_records
from alignkit.rl.run import load_prompts
from alignkit.training.config import TrainConfig
from alignkit.training.distributed import is_main
from alignkit.training.loop import TrainResult, chain_on_step, train
from alignkit.training.preference import PAIR_LOSSES, PairwiseObjective, PrefLossConfig
from alignkit.training.reference import LiveReference
from alignkit.training.run import finish_run, prepare_run, save_lm
from alignkit.training.tracking import StepLog

PAIRS, HELDOUT = "pairs.jsonl", "heldout.json"
# Preference-loss keys that mean nothing here: a value other than the default would be silently ignored.
UNUSED_KEYS = ("reference_cache", "reference_batch_size", "sft_weight", "kto_desirable_weight",
               "kto_undesirable_weight")


@dataclass
class OnlineDPOConfig(PrefLossConfig):
    reference: str = "live"  # live only: each step's pairs get the frozen starting policy's log-probs as they are made
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: list[DataSpec] = field(default_factory=list)  # prompt files; records' other fields reach the reward
    skip_bad: bool = False  # skip bad prompt records instead of stopping at the first
    rewards: list[RewardSpec] = field(default_factory=list)  # what ranks the samples, e.g. [{kind: format}]
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=2))  # n: samples per prompt (k)
    prompts_per_step: int = 8  # prompts sampled per optimizer step
    grad_accum: int = 1  # micro-batches the step's pairs are split into (fewer when there are fewer pairs)
    pair_rule: str = "best_vs_worst"  # all_pairs | best_vs_rest | best_vs_worst | margin
    pair_threshold: float = 0.0  # pair_rule=margin: keep pairs whose reward difference is above this
    max_length: int = 1024  # tokens of prompt + response; a longer pair is dropped (counted), never cut
    max_resamples: int = 8  # more prompt draws allowed when a step's samples give no pair (all tied)
    shuffle_prompts: bool = True
    heldout: list[DataSpec] = field(default_factory=list)  # prompt files scored before and after (greedy)
    log_pairs: int = 4  # pairs of each step written to pairs.jsonl; 0: none
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6))  # the offline DPO default lr
    merge_lora: bool = True  # with LoRA, also write the merged model to final/ (the adapter goes to final/adapter)

    def validate(self, where: str = "") -> None:
        """The loss, pairing and step settings (model, sampling and train check themselves first)."""
        require_choice(where, "loss", self.loss, PAIR_LOSSES)
        self.validate_loss(where)
        require(self.reference == "live", where, "reference",
                "live (online pairs get the frozen starting policy's log-probs as they are sampled)", self.reference)
        defaults = PrefLossConfig()
        for key in UNUSED_KEYS:
            require(getattr(self, key) == getattr(defaults, key), where, key, "left out (online DPO does not use it)",
                    getattr(self, key))
        require(len(self.prompts) > 0, where, "prompts", "a list of at least one prompt file", self.prompts)
        validate_reward_specs(self.rewards, "rewards")
        require_number("sampling", "n", self.sampling.n, low=2, whole=True)
        # The policy changes every step: a cache keyed on the prompt would replay an older policy's samples.
        require(not self.sampling.cache, "sampling", "cache", "empty (online samples come from a policy that "
                "changes every step; a resumed run samples the same again from its seeds)", self.sampling.cache)
        for key in ("prompts_per_step", "grad_accum", "max_length"):
            require_number(where, key, getattr(self, key), low=1, whole=True)
        for key in ("max_resamples", "log_pairs"):
            require_number(where, key, getattr(self, key), low=0, whole=True)
        require_choice(where, "pair_rule", self.pair_rule, PAIR_RULES)
        require_number(where, "pair_threshold", self.pair_threshold, low=0)
        require(not self.pair_threshold or self.pair_rule == "margin", where, "pair_threshold",
                "0 unless pair_rule is margin", self.pair_threshold)
        # The source makes each step's micro-batches; train.grad_accum would be silently ignored.
        require(self.train.grad_accum == 1, "train", "grad_accum", "1 (set grad_accum, the top-level key)",
                self.train.grad_accum)


class OnlinePairwiseObjective(PairwiseObjective):
    """The pairwise loss, whose step records also carry the pair source's statistics (`after_step` adds them
    to the record the loop logs right after)."""

    def __init__(self, cfg: PrefLossConfig, source_stats, *, loss_chunk_size: int = 0):
        # no LiveReference: every micro-batch carries its reference log-probs
        super().__init__(cfg, loss_chunk_size=loss_chunk_size)
        self.source_stats = source_stats

    def after_step(self, record: dict) -> None:
        for key, value in self.source_stats().items():
            record.setdefault(key, value)


class PairLog(StepLog):
    """pairs.jsonl: the first `count` pairs of each step, with their rewards."""

    def __init__(self, path: str, source: OnlinePairSource, count: int):
        super().__init__(path, count)
        self.source = source

    def records(self, step: int) -> list[dict]:
        return [{"step": step, "source": p.prompt.metadata.get("source", ""), "prompt": p.prompt.messages[-1]["content"],
                 "chosen": p.chosen.text, "rejected": p.rejected.text, "chosen_reward": p.chosen.reward,
                 "rejected_reward": p.rejected.reward} for p in self.source.last_pairs[:self.count]]


def load_run_prompts(cfg: OnlineDPOConfig, tokenizer) -> tuple[list, list, dict]:
    """(training prompts, held-out prompts, report): both read before the model loads."""
    prompts, _, report = load_prompts(cfg, tokenizer)
    heldout = read_prompt_records(cfg.heldout, skip_bad=cfg.skip_bad) if cfg.heldout else []
    report["heldout"] = {"prompts": len(heldout), "files": [spec.path for spec in cfg.heldout]}
    return prompts, heldout, report


def measure_heldout(model, sampler: PolicySampler, version: int, prompts: list, reward,
                    cfg: OnlineDPOConfig) -> dict | None:
    """Greedy answers to the held-out prompts, scored; None without held-out prompts. `version`: the step whose
    weights the model holds (0 before training, the run's steps after)."""
    if not prompts:
        return None
    started = time.perf_counter()
    backend = sampler.backend(model, version)
    result = heldout_eval(backend, prompts, reward, max_tokens=cfg.sampling.max_tokens, progress=cfg.train.progress)
    return {**result.as_dict(), "seconds": time.perf_counter() - started}


def run_online_dpo(cfg: OnlineDPOConfig, *, model=None, tokenizer=None, on_step=None,
                   judge_backend=None) -> TrainResult:
    """Train with pairs the policy samples every step; the final model goes to output_dir/final (HF layout)."""
    import torch

    from alignkit.models.loading import load_model
    from alignkit.models.lora import apply_lora, merge_lora

    ctx = prepare_run(cfg, partial(load_run_prompts, cfg), tokenizer=tokenizer)
    reward = build_reward(cfg.rewards, judge_backend=judge_backend)
    if model is None:
        model, _ = load_model(cfg.model.name, dtype=cfg.model.dtype, quantization=cfg.model.quantization_settings())
    model = merge_lora(model)  # an adapter from an earlier stage is part of the starting (and reference) policy
    if cfg.model.lora.enabled:
        model = apply_lora(model, cfg.model.lora, seed=cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    sampler = PolicySampler(ctx.tokenizer, cfg.sampling)
    try:
        result, before, after = _train(cfg, ctx, model, reward, sampler, on_step)
    finally:
        sampler.close()  # drops a vLLM engine and its folder
    if is_main():
        if before is not None:
            write_json_atomic(os.path.join(ctx.out, HELDOUT), {"before": before, "after": after}, allow_nan=True)
        _print_summary(cfg, result, before, after)
    return result


def _train(cfg: OnlineDPOConfig, ctx, model, reward, sampler: PolicySampler, on_step):
    """(the run's result, held-out before, held-out after)."""
    # Version 0: the weights the run starts from, those of step 0 (a checkpoint that train() loads on a resume
    # tells the source, which has a vLLM engine take the loaded weights).
    before = measure_heldout(model, sampler, 0, ctx.eval_examples, reward, cfg)
    chunk = cfg.train.loss_chunk_size
    reference = LiveReference(model, cfg.train.precision, chunk=chunk) if cfg.needs_reference else None
    objective = OnlinePairwiseObjective(cfg, lambda: source.last_stats, loss_chunk_size=chunk)
    source = OnlinePairSource(ctx.train_examples, ctx.tokenizer, reward, cfg.sampling, objective.collate,
                              prompts_per_step=cfg.prompts_per_step, grad_accum=cfg.grad_accum, reference=reference,
                              pair_rule=cfg.pair_rule, pair_threshold=cfg.pair_threshold, max_length=cfg.max_length,
                              max_resamples=cfg.max_resamples, shuffle_prompts=cfg.shuffle_prompts, sampler=sampler)
    pair_log = PairLog(os.path.join(ctx.out, PAIRS), source, cfg.log_pairs)
    result = train(model, objective, source=source, cfg=cfg.train, config_dict=to_dict(cfg),
                   on_step=chain_on_step(pair_log, on_step))
    finish_run(ctx, result, partial(save_lm, model, ctx.tokenizer, lora=cfg.model.lora.enabled, merge=cfg.merge_lora))
    # After the last step the weights differ from every step sampled at (0 .. steps - 1).
    after = measure_heldout(model, sampler, result.steps, ctx.eval_examples, reward, cfg)
    return result, before, after


def _print_summary(cfg: OnlineDPOConfig, result: TrainResult, before: dict | None, after: dict | None) -> None:
    pairs = sum(r.get("pairs", 0) for r in result.history)
    print(f"online {cfg.loss}: {result.steps} steps, {pairs} pairs this run, {result.seconds:.0f}s of training",
          flush=True)
    if before is not None:
        parts = "".join(f", {name} {before['components'][name]:.3f} -> {after['components'][name]:.3f}"
                        for name in before["components"])
        print(f"held-out ({before['prompts']} prompts): reward {before['reward_mean']:.3f} -> "
              f"{after['reward_mean']:.3f}{parts} ({os.path.join(cfg.train.output_dir, HELDOUT)})", flush=True)
    print(f"saved to {os.path.join(cfg.train.output_dir, 'final')}", flush=True)
