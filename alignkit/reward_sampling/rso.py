"""RSO (Liu et al. 2023, "Statistical Rejection Sampling Improves Preference Optimization"): preference pairs
drawn from the optimal policy a reward implies, then DPO or SLiC on them.

For a reward r and a beta, the KL-regularised optimum is pi*(y|x) ∝ pi_sft(y|x) exp(r(x,y) / beta). RSO
samples from it by rejection: the SFT policy proposes n candidates per prompt, a candidate y is accepted with
probability exp((r(y) - M) / beta) where M is the highest reward among the candidates not yet accepted, and
the accepted samples are paired up, each pair labelled by the reward (chosen = higher reward; a tie is no
preference and is dropped). The SFT policy then trains on the pairs and is also the DPO reference.

Choices, each the paper's unless said:
- `rso_accept` is the paper's Algorithm 1, in passes. A pass visits every candidate not yet accepted once,
  in a fresh seeded random order, flipping each one's coin against M = the highest reward among them; it
  stops as soon as `num_samples` are accepted. Passes repeat, M recomputed over what is left, until
  `num_samples` are accepted or every candidate is (the candidates ran out: then all are returned). The
  remaining maximum always passes its coin (probability 1), so each pass accepts at least one candidate and
  the loop ends. Within one pass the accepted candidates are exactly a rejection sample of pi* over the
  uniform proposal on the remaining candidates (`rejection_pass`); later passes raise every chance by
  lowering M. beta -> infinity accepts uniformly at random; beta -> 0 accepts the best, then the next best
  (the top-k-over-n "rejection sampling" of Llama 2 is this limit).
- Pairing (`make_pairs`, over the accepted samples in acceptance order, which is random):
  first_round: 1st v 2nd, 3rd v 4th, ...: k samples give k//2 pairs (the paper's "first-round-rank", its
  main recipe); tournament: the winners play on until one is left, k - 1 games in all (the paper's
  "tournament-rank"; a tie's earlier-accepted sample advances, an odd one out has a bye); all_pairs: every
  two accepted samples, k(k-1)/2 games.
- Only candidates with a measured reward take part: one the reward could not score (it holds the reward's
  failure_reward, a stand-in) is never accepted, nor is a blank completion (the preference data layer
  refuses an empty assistant turn, so it could not be trained on). pi* is over the rest; the report counts
  both. The same text accepted twice is no preference: such a game counts as a tie.
- loss: dpo is the paper's sigmoid-norm (its gamma is our pref.beta); slic with slic_reg_weight 0 is its
  hinge (margin slic_delta = 1/gamma, the loss scaled by 1/gamma); any other pairwise loss alignkit has works
  on the same pairs.

Files in output_dir: candidates.jsonl (per prompt: every candidate with its reward, `accepted` in acceptance
order and the `pairs` made; the layout of `candidates.samples_record`, so it is also a scored-ranking file),
pairs.jsonl (TRL's prompt/chosen/rejected, with chosen_reward and rejected_reward; `alignkit dpo` trains on
it as it is), report.json, config.yaml, and train/ (the `alignkit pref` run: final/, summary.json, ...).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

from alignkit.atomic_write import write_json_atomic, write_text_atomic
from alignkit.config import ConfigError, require, require_choice, require_number, save_config, validate_config
from alignkit.data.readers import DataSpec
from alignkit.models.config import ModelConfig
from alignkit.reward_sampling.candidates import (PolicySampler, PromptSamples, SamplingConfig, heldout_eval,
                                                 sample_and_score, samples_record, sampling_backend)
from alignkit.rewards.spec import RewardSpec, build_reward, validate_reward_specs
from alignkit.rl.rollout import derived_seed
from alignkit.training.config import TrainConfig
from alignkit.training.pref_run import PrefConfig, PrefDataConfig, run_pref
from alignkit.training.preference import PAIR_LOSSES, PrefLossConfig
from alignkit.training.run import FINAL, FINISHED_MARKS, run_summary
from alignkit.training.sft import MIN_MAX_LENGTH

PAIRINGS = ("first_round", "tournament", "all_pairs")
CANDIDATES, PAIRS, REPORT, TRAIN = "candidates.jsonl", "pairs.jsonl", "report.json", "train"


# ---- selection: pure functions ----

def _check_rewards(rewards: Sequence[float]) -> None:
    for i, r in enumerate(rewards):
        # A NaN would fail every coin and an infinity make exp() NaN: either silently skews what is accepted.
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
            raise ValueError(f"rewards[{i}]: must be a finite number, got {r!r}")


def acceptance_probabilities(rewards: Sequence[float], beta: float) -> list[float]:
    """exp((r - M) / beta) for each reward, M the highest: each candidate's chance in a pass (1 for the best)."""
    top = max(rewards)
    return [math.exp((r - top) / beta) for r in rewards]


def rejection_pass(rewards: Sequence[float], remaining: Sequence[int], beta: float, rng: random.Random,
                   limit: int | None = None) -> list[int]:
    """One pass of Algorithm 1: each of `remaining` (indices into `rewards`) tried once, in a seeded random
    order, accepted when u < exp((r - M) / beta), M the highest reward among `remaining`; stops after `limit`
    acceptances. Returns the accepted indices in acceptance order."""
    order = list(remaining)
    rng.shuffle(order)
    chances = acceptance_probabilities([rewards[i] for i in order], beta)
    accepted = []
    for i, chance in zip(order, chances):
        if rng.random() < chance:
            accepted.append(i)
            if limit is not None and len(accepted) == limit:
                break
    return accepted


def rso_accept(rewards: Sequence[float], beta: float, num_samples: int, rng: random.Random) -> list[int]:
    """Statistical rejection sampling over one prompt's candidates (the module docstring has the rule):
    passes until `num_samples` are accepted or all are. Returns candidate indices in acceptance order."""
    _check_rewards(rewards)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a whole number >= 1, got {num_samples!r}")
    accepted: list[int] = []
    remaining = list(range(len(rewards)))
    while remaining and len(accepted) < num_samples:
        taken = rejection_pass(rewards, remaining, beta, rng, limit=num_samples - len(accepted))
        accepted += taken
        done = set(taken)
        remaining = [i for i in remaining if i not in done]
    return accepted


def _tournament(order: Sequence[int], rewards: Sequence[float]) -> list[tuple[int, int]]:
    games, players = [], list(order)
    while len(players) > 1:
        winners = []
        for a, b in zip(players[0::2], players[1::2]):
            games.append((a, b))
            winners.append(a if rewards[a] >= rewards[b] else b)  # a tie: the earlier-accepted advances
        if len(players) % 2:
            winners.append(players[-1])  # a bye
        players = winners
    return games


def make_pairs(order: Sequence[int], rewards: Sequence[float], pairing: str) -> tuple[list[tuple[int, int]], int]:
    """(pairs as (chosen, rejected) indices, games dropped as ties) for the samples `order` (acceptance order),
    under `pairing` (module docstring); chosen is the higher reward."""
    if pairing == "first_round":
        games = list(zip(order[0::2], order[1::2]))
    elif pairing == "tournament":
        games = _tournament(order, rewards)
    elif pairing == "all_pairs":
        games = list(combinations(order, 2))
    else:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    pairs = [(a, b) if rewards[a] > rewards[b] else (b, a) for a, b in games if rewards[a] != rewards[b]]
    return pairs, len(games) - len(pairs)


def prompt_rng(seed: int, index: int) -> random.Random:
    """The coin flips of prompt `index`: its own stream, so one prompt's draws do not depend on the others'."""
    return random.Random(derived_seed(seed, index))


@dataclass
class Selection:
    accepted: list[int]  # candidate indices, in acceptance order
    pairs: list[tuple[int, int]]  # (chosen, rejected) candidate indices
    ties: int  # games dropped: equal rewards, or the same text
    eligible: int  # scored, non-blank candidates: the ones rejection sampling draws from
    expected_acceptance: float  # mean first-pass chance over the eligible candidates (the paper's Theorem 1)


def select(item: PromptSamples, *, beta: float, num_accept: int, pairing: str, rng: random.Random) -> Selection:
    """Rejection sampling and pairing for one prompt's scored candidates."""
    eligible = [i for i, s in enumerate(item.samples) if s.failure is None and s.text.strip()]
    if not eligible:
        return Selection([], [], 0, 0, math.nan)
    rewards = item.rewards
    eligible_rewards = [rewards[i] for i in eligible]
    accepted = [eligible[k] for k in rso_accept(eligible_rewards, beta, num_accept, rng)]
    pairs, ties = make_pairs(accepted, rewards, pairing)
    distinct = [(c, r) for c, r in pairs if item.samples[c].text != item.samples[r].text]
    return Selection(accepted, distinct, ties + len(pairs) - len(distinct), len(eligible),
                     _mean(acceptance_probabilities(eligible_rewards, beta)))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# ---- config ----

@dataclass
class RSOPrefConfig(PrefLossConfig):
    """The training on the pairs: `alignkit pref`'s loss keys and train section. RSO supplies the model (the
    SFT policy, also the reference) and the data (its pairs.jsonl)."""

    loss: str = "dpo"  # dpo (the paper's sigmoid-norm) | slic (its hinge, with slic_reg_weight 0) | ipo | cdpo | robust | simpo | orpo
    max_length: int = 1024  # tokens of prompt + response; longer responses are cut at the end
    eval_fraction: float = 0.0  # share of the pairs held out for eval metrics
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-6))  # output_dir is set by RSO: leave it out

    def loss_config(self) -> PrefConfig:
        return PrefConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PrefLossConfig)})

    def validate(self, where: str = "pref") -> None:
        require_choice(where, "loss", self.loss, PAIR_LOSSES)
        require_number(where, "max_length", self.max_length, low=MIN_MAX_LENGTH, whole=True)
        require_number(where, "eval_fraction", self.eval_fraction, low=0, high=1, high_open=True)
        require(self.train.output_dir == TrainConfig().output_dir, f"{where}.train", "output_dir",
                "left out (RSO trains in <output_dir>/train)", self.train.output_dir)
        self.validate_loss(where)


@dataclass
class RSOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the SFT policy: samples the candidates, then trains (and is the reference)
    prompts: list[DataSpec] = field(default_factory=list)  # prompt files (any format alignkit reads); records' other fields reach the reward
    max_prompts: int = 0  # use the first this many prompts; 0: all
    heldout: list[DataSpec] = field(default_factory=list)  # held-out prompts answered greedily before and after training; empty: none
    skip_bad: bool = False  # skip bad prompt records instead of stopping at the first
    rewards: list[RewardSpec] = field(default_factory=list)  # e.g. [{kind: rm, path: runs/rm/final}, {kind: format}]
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=16))  # the candidates: n per prompt from the SFT policy
    beta_rso: float = 0.5  # pi* ∝ pi_sft exp(r / beta_rso): small accepts near the best only, large near uniformly (the paper's 0.5)
    num_accept: int = 8  # samples accepted per prompt (the paper's num_samples: 8 of 64)
    pairing: str = "first_round"  # first_round (k/2 pairs) | tournament (k-1 games) | all_pairs (k(k-1)/2)
    seed: int = 0  # the rejection coins; each prompt's stream derives from it and the prompt's index
    pref: RSOPrefConfig = field(default_factory=RSOPrefConfig)
    output_dir: str = "runs/rso"  # candidates.jsonl, pairs.jsonl, report.json; the training in train/

    def validate(self, where: str = "") -> None:
        """The values the sections cannot check alone (model, sampling and pref check themselves)."""
        require(len(self.prompts) > 0, where, "prompts", "a list of at least one prompt file", self.prompts)
        require_number(where, "max_prompts", self.max_prompts, low=0, whole=True)
        validate_reward_specs(self.rewards, "rewards")
        require_number("sampling", "n", self.sampling.n, low=2, whole=True)  # a pair needs two samples
        require_number(where, "beta_rso", self.beta_rso, low=0, low_open=True)
        require_number(where, "num_accept", self.num_accept, low=2, high=self.sampling.n, whole=True)
        require_choice(where, "pairing", self.pairing, PAIRINGS)
        require_number(where, "seed", self.seed, low=0, whole=True)
        require(isinstance(self.output_dir, str) and bool(self.output_dir), where, "output_dir", "a folder path",
                self.output_dir)


def pref_config(cfg: RSOConfig, pairs_path: str) -> PrefConfig:
    """The `alignkit pref` run on the pairs: the pref section's loss and train settings, RSO's model and data."""
    pref = cfg.pref.loss_config()
    pref.model = cfg.model
    pref.data = PrefDataConfig(train=[DataSpec(pairs_path)], max_length=cfg.pref.max_length,
                               eval_fraction=cfg.pref.eval_fraction)
    pref.train = dataclasses.replace(cfg.pref.train, output_dir=os.path.join(cfg.output_dir, TRAIN))
    return pref


# ---- the run ----

def _check_folder(cfg: RSOConfig) -> None:
    """A finished training in output_dir stops the run before any sampling, not after it."""
    if os.path.exists(cfg.output_dir) and not os.path.isdir(cfg.output_dir):
        raise ConfigError(f"output_dir: {cfg.output_dir} is a file, not a folder")
    train_dir = os.path.join(cfg.output_dir, TRAIN)
    finished = [name for name in FINISHED_MARKS if os.path.exists(os.path.join(train_dir, name))]
    if finished and cfg.pref.train.if_exists == "error":
        raise ConfigError(f"output_dir: {cfg.output_dir} holds a finished RSO run ({TRAIN}/{finished[0]} exists); "
                          "set pref.train.if_exists=overwrite to start over")


def _read_prompts(cfg: RSOConfig):
    from alignkit.data.prompts import read_prompt_records

    prompts = read_prompt_records(cfg.prompts, skip_bad=cfg.skip_bad)
    if cfg.max_prompts:
        prompts = prompts[:cfg.max_prompts]
    heldout = read_prompt_records(cfg.heldout, skip_bad=cfg.skip_bad) if cfg.heldout else []
    return prompts, heldout


def _backend(sampler: PolicySampler, model, cfg: RSOConfig, name: str, version: int):
    """The SFT model (version 0) or the trained one (1), named by its folder."""
    from alignkit.generation.model_id import local_model_id

    # The id keys the cache: a retrained model in the same folder must not replay the old one's samples.
    return sampling_backend(sampler, model, version, local_model_id(name, cfg.model.dtype))


def _pair_record(item: PromptSamples, chosen: int, rejected: int) -> dict:
    c, r = item.samples[chosen], item.samples[rejected]
    return {"prompt": item.prompt.messages, "chosen": [{"role": "assistant", "content": c.text}],
            "rejected": [{"role": "assistant", "content": r.text}], "chosen_reward": c.reward,
            "rejected_reward": r.reward, "source": item.prompt.metadata.get("source", "")}


def _write_jsonl(path: str, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def selection_report(scored: list[PromptSamples], selections: list[Selection]) -> dict:
    """Acceptance and pairing counts over all prompts; acceptance rates are over the eligible candidates (scored
    and not blank)."""
    eligible = sum(s.eligible for s in selections)
    accepted = sum(len(s.accepted) for s in selections)
    rewards = [x.reward for item in scored for x in item.samples if x.failure is None]  # no stand-in values
    chosen = [item.samples[c].reward for item, s in zip(scored, selections) for c, _ in s.pairs]
    rejected = [item.samples[r].reward for item, s in zip(scored, selections) for _, r in s.pairs]
    return {
        "method": "rso", "prompts": len(scored), "candidates": sum(len(item.samples) for item in scored),
        "eligible": eligible,
        "blank": sum(not x.text.strip() for item in scored for x in item.samples),
        "reward_failures": sum(x.failure is not None for item in scored for x in item.samples),
        "accepted": accepted, "acceptance_rate": accepted / eligible if eligible else math.nan,
        "acceptance_rate_prompt_mean": _mean([len(s.accepted) / s.eligible for s in selections if s.eligible]),
        "expected_acceptance": _mean([s.expected_acceptance for s in selections if s.eligible]),
        "short_prompts": sum(len(s.accepted) < 2 for s in selections),  # fewer than two accepted: no pair possible
        "pairs": len(chosen), "ties_dropped": sum(s.ties for s in selections),
        "reward_mean": _mean(rewards),
        "reward_mean_accepted": _mean([item.samples[i].reward for item, s in zip(scored, selections)
                                       for i in s.accepted]),
        "reward_mean_chosen": _mean(chosen), "reward_mean_rejected": _mean(rejected),
    }


def _print_report(report: dict, cfg: RSOConfig) -> None:
    print(f"rso: {report['accepted']} of {report['eligible']} candidates accepted "
          f"(rate {report['acceptance_rate']:.3f}, per prompt {report['acceptance_rate_prompt_mean']:.3f}; "
          f"first-pass chance {report['expected_acceptance']:.3f} at beta_rso={cfg.beta_rso}); left out: "
          f"{report['blank']} blank, {report['reward_failures']} the reward could not score", flush=True)
    print(f"rso: {report['pairs']} pairs ({cfg.pairing}), {report['ties_dropped']} ties dropped; mean reward "
          f"{report['reward_mean']:.3f} sampled, {report['reward_mean_accepted']:.3f} accepted, "
          f"{report['reward_mean_chosen']:.3f} chosen v {report['reward_mean_rejected']:.3f} rejected", flush=True)


def _print_heldout(label: str, result) -> None:
    parts = ", ".join(f"{name} {value:.3f}" for name, value in result.components.items())
    print(f"rso: held-out {label}: reward {result.reward_mean:.3f} ({parts}) on {result.prompts} prompts", flush=True)


def run_rso(cfg: RSOConfig) -> dict:
    """Sample, score, rejection-sample, pair, train; returns the report (also written to report.json)."""
    from alignkit.models.loading import load_tokenizer, use_chat_template

    started = time.perf_counter()
    validate_config(cfg)  # configs built in Python never went through load_config
    _check_folder(cfg)
    prompts, heldout = _read_prompts(cfg)
    os.makedirs(cfg.output_dir, exist_ok=True)
    save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    reward = build_reward(cfg.rewards)
    tokenizer = use_chat_template(load_tokenizer(cfg.model.name), cfg.model.chat_template, cfg.model.name)
    sampler = PolicySampler(tokenizer, cfg.sampling)
    try:
        return _sample_train_measure(cfg, started, prompts, heldout, reward, tokenizer, sampler)
    finally:
        sampler.close()  # drops a vLLM engine and its folder


def _sample_train_measure(cfg: RSOConfig, started: float, prompts, heldout, reward, tokenizer,
                          sampler: PolicySampler) -> dict:
    from alignkit.models.loading import load_model

    model, _ = load_model(cfg.model.name, dtype=cfg.model.dtype)
    backend = _backend(sampler, model, cfg, cfg.model.name, 0)
    print(f"rso: {cfg.sampling.n} candidates for each of {len(prompts)} prompts", flush=True)
    scored = sample_and_score(backend, prompts, cfg.sampling.params(), reward, desc="candidates")
    selections = [select(item, beta=cfg.beta_rso, num_accept=cfg.num_accept, pairing=cfg.pairing,
                         rng=prompt_rng(cfg.seed, index)) for index, item in enumerate(scored)]
    _write_jsonl(os.path.join(cfg.output_dir, CANDIDATES),
                 [{**samples_record(item), "accepted": s.accepted, "pairs": [list(p) for p in s.pairs]}
                  for item, s in zip(scored, selections)])
    pairs_path = os.path.join(cfg.output_dir, PAIRS)
    _write_jsonl(pairs_path, [_pair_record(item, c, r) for item, s in zip(scored, selections) for c, r in s.pairs])
    report = selection_report(scored, selections)
    _print_report(report, cfg)
    if not report["pairs"]:
        raise ValueError(f"rso: no pairs to train on (every game tied; see {pairs_path}): raise sampling.n or "
                         "num_accept, or use a reward that tells the samples apart")
    sampled = time.perf_counter()

    if heldout:
        before = heldout_eval(backend, heldout, reward, max_tokens=cfg.sampling.max_tokens)
        _print_heldout("before", before)
        report["heldout"] = {"before": before.as_dict()}
    measured = time.perf_counter()
    pref = pref_config(cfg, pairs_path)
    result = run_pref(pref, model=model, tokenizer=tokenizer)
    report["train"] = run_summary(result)
    final = os.path.join(pref.train.output_dir, FINAL)
    trained = time.perf_counter()
    if heldout:
        del model, backend  # the trained weights are read back from final/, as any later use sees them
        after_model, _ = load_model(final, dtype=cfg.model.dtype)
        after = heldout_eval(_backend(sampler, after_model, cfg, final, 1), heldout, reward,
                             max_tokens=cfg.sampling.max_tokens)
        _print_heldout("after", after)
        report["heldout"]["after"] = after.as_dict()
    done = time.perf_counter()
    # The held-out measurement is reported apart: it is not part of the method's cost.
    report["seconds"] = {"sampling": sampled - started, "training": trained - measured,
                         "heldout": (measured - sampled) + (done - trained), "total": done - started}
    report["files"] = {"candidates": os.path.join(cfg.output_dir, CANDIDATES), "pairs": pairs_path,
                       "model": final}
    write_json_atomic(os.path.join(cfg.output_dir, REPORT), report, allow_nan=True)
    print(f"rso: saved to {final}; candidates, pairs and report.json in {cfg.output_dir}", flush=True)
    return report
