"""The round loop that expert iteration and iterative DPO share.

Each round samples `sampling.n` completions per prompt from the current model, scores them with the
reward, hands them to the method (which builds its training data and trains) and measures the result
with greedy answers to the held-out prompts. Round 0 is the starting model's held-out measurement, the
baseline every later round is read against.

Models stay in memory from round to round: training updates the model in place and the next round
samples from it, so the only loads are the starting model and, on a resumed run, the model of the last
finished round. Every round still saves its model (round_k/<sft|pref>/final), so any round can be
evaluated, or trained from, later.

The output folder:
  config.yaml              the run's config; a rerun must match it except for `rounds` and settings that
                           cannot change a result (RESUME_FREE), or finished rounds of two configs would mix
  round_0/round.json       the starting model's held-out record
  round_k/samples.jsonl    every sample with its reward (`samples_record`: a scored ranking file)
  round_k/...              the method's training data and training run, with its final/ model
  round_k/round.json       the round's record, written last: a rerun skips every round that has one, so an
                           interrupted job resumes at the round it stopped in (a round whose training had
                           finished reuses that model rather than train again)
  rounds.jsonl, report.json  the records so far, rewritten after every round

Sampling seeds differ per round (derived from sampling.seed and the round number), so a round that kept
its model does not draw the same samples again. With sampling.cache, the model id in each cache key
carries a fingerprint of the weights: a round never replays another model's samples.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from alignkit.atomic_write import remove_leftovers, write_json_atomic, write_jsonl_atomic
from alignkit.config import ConfigError, require, require_choice, require_number, save_config, to_dict
from alignkit.data.readers import DataSpec
from alignkit.models.config import ModelConfig
from alignkit.reward_sampling.candidates import (PolicySampler, PromptSamples, SamplingConfig, heldout_eval,
                                                 sample_and_score, samples_record, sampling_backend)
from alignkit.rewards.spec import RewardSpec, build_reward, validate_reward_specs
from alignkit.data.prompts import PromptRecord, read_prompt_records
from alignkit.rl.prompts import PromptStream
from alignkit.training.config import TrainConfig

IF_EXISTS = ("resume", "overwrite")
# Keys a resumed run may change: none of them changes what a finished round computed.
RESUME_FREE = ("rounds", "if_exists", "sampling.cache", "sampling.batch_size", "sampling.gpu_memory_utilization")
CONFIG, ROUND, SAMPLES, LOG, REPORT = "config.yaml", "round.json", "samples.jsonl", "rounds.jsonl", "report.json"
_ROUND_DIR = re.compile(r"round_\d+")


@dataclass
class RoundsConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the starting model
    prompts: list[DataSpec] = field(default_factory=list)  # prompt files sampled each round; records' other fields reach the reward
    heldout: list[DataSpec] = field(default_factory=list)  # prompt files answered greedily after every round
    skip_bad: bool = False  # skip bad prompt records instead of stopping at the first
    rewards: list[RewardSpec] = field(default_factory=list)  # e.g. [{kind: format}, {kind: rm, path: runs/rm/final}]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # held-out answers use its max_tokens too
    rounds: int = 2  # rounds of sample, score, train (after round 0, the starting model's measurement)
    prompts_per_round: int = 0  # 0: every prompt each round; else a different seeded slice of the prompts each round
    max_length: int = 1024  # training: tokens of prompt + response; a longer example loses the end of its response
    output_dir: str = "runs/rounds"
    if_exists: str = "resume"  # resume: skip the rounds output_dir has finished | overwrite: start over

    def validate(self, where: str = "") -> None:
        from alignkit.training.sft import MIN_MAX_LENGTH

        require(len(self.prompts) > 0, where, "prompts", "a list of at least one prompt file", self.prompts)
        require(len(self.heldout) > 0, where, "heldout", "a list of at least one prompt file", self.heldout)
        validate_reward_specs(self.rewards, "rewards")
        require_number(where, "rounds", self.rounds, low=1, whole=True)
        require_number(where, "prompts_per_round", self.prompts_per_round, low=0, whole=True)
        require_number(where, "max_length", self.max_length, low=MIN_MAX_LENGTH, whole=True)
        require(isinstance(self.output_dir, str) and bool(self.output_dir), where, "output_dir", "a folder path",
                self.output_dir)
        require_choice(where, "if_exists", self.if_exists, IF_EXISTS)
        # A LoRA run would hand the next round a peft wrapper instead of the trained model.
        require(not self.model.lora.enabled, "model.lora", "enabled", "false (the rounds train the full model)",
                self.model.lora.enabled)


def check_round_train(train: TrainConfig, where: str) -> None:
    """Each round sets its training run's folder itself: a value given here would be silently ignored."""
    default = TrainConfig()
    require(train.output_dir == default.output_dir, where, "output_dir",
            "left out (round k trains in <output_dir>/round_k)", train.output_dir)
    require(train.if_exists == default.if_exists, where, "if_exists",
            "left out (finished rounds are skipped; the top-level if_exists=overwrite starts over)", train.if_exists)


# ---------------------------------------------------------------- the models a run holds

def load_start(path: str, dtype: str):
    """A model to train from: an adapter folder comes merged (the rounds train full models)."""
    from alignkit.models.loading import load_model
    from alignkit.models.lora import merge_lora

    model, _ = load_model(path, dtype=dtype)
    return merge_lora(model)


@dataclass
class RoundState:
    """What the rounds carry from one to the next: the data, the reward and the current model."""
    cfg: RoundsConfig
    prompts: list[PromptRecord]
    heldout: list[PromptRecord]
    reward: Any
    tokenizer: Any  # with the chat template every prompt and training example goes through
    model_path: str  # where the current model's weights are saved (the starting spec before any training)
    model: Any = None  # the current model; loaded when a round first needs it
    initial: Any = None  # a frozen copy of the starting model, kept once a method asks for it
    sampler: PolicySampler | None = None  # local, or the one vLLM engine every round samples with

    def current(self):
        if self.model is None:
            print(f"loading {self.model_path}", flush=True)
            self.model = load_start(self.model_path, self.cfg.model.dtype)
        return self.model

    def adopt(self, path: str, *, load: bool) -> None:
        """The current model is now the one saved at `path` (trained in place already, or loaded when `load`)."""
        self.model_path = path
        if load:
            self.model = None
            self.current()

    def initial_model(self):
        """The starting model, frozen: copied while the current model still is it, else loaded. Call it before
        the first training changes the current model in place."""
        if self.initial is None:
            if self.model is not None and self.model_path == self.cfg.model.name:
                self.initial = copy.deepcopy(self.model)
            else:
                print(f"loading {self.cfg.model.name} (the starting model)", flush=True)
                self.initial = load_start(self.cfg.model.name, self.cfg.model.dtype)
            self.initial.requires_grad_(False).eval()
        return self.initial


@contextmanager
def backend_for(state: RoundState) -> Iterator[Any]:
    """A generation backend on the current model, behind sampling.cache when one is set."""
    from alignkit.training.reference import model_fingerprint

    sampling = state.cfg.sampling
    model = state.current()
    if state.sampler is None:
        state.sampler = PolicySampler(state.tokenizer, sampling)
    # The model is trained in place under one name: only its weights tell two rounds' models apart.
    model_id = f"{state.model_path}@{model_fingerprint(model)}" if sampling.cache else state.model_path
    # Every change of the current model comes with a new model_path (a round's final/ folder), so the path
    # is the version that tells a vLLM engine its weights are out of date.
    backend = sampling_backend(state.sampler, model, state.model_path, model_id)
    try:
        yield backend
    finally:
        if sampling.cache:  # the cache opened here; the sampler (and its engine) lives for the run
            backend.close()


# ---------------------------------------------------------------- one round

def round_prompts(prompts: list[PromptRecord], k: int, per_round: int, seed: int) -> list[PromptRecord]:
    """Round k's prompts: all of them, or the k-th slice of `per_round` from seeded passes over them
    (PromptStream), so successive rounds see different prompts and a resumed round the same ones."""
    if not per_round:
        return list(prompts)
    stream = PromptStream(len(prompts), seed)
    stream.position = (k - 1) * per_round
    return [prompts[index] for index in stream.take(per_round)]


def sample_stats(scored: list[PromptSamples]) -> dict:
    samples = [s for item in scored for s in item.samples]
    scored_ok = [s.reward for s in samples if s.failure is None]
    return {"samples": len(samples), "sample_reward_mean": mean_or_none(scored_ok),
            "failures": len(samples) - len(scored_ok),
            "truncated": sum(s.finish_reason == "length" for s in samples)}


def mean_or_none(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def heldout_record(state: RoundState) -> dict:
    with backend_for(state) as backend:
        result = heldout_eval(backend, state.heldout, state.reward, max_tokens=state.cfg.sampling.max_tokens,
                              progress=True)
    return result.as_dict()


# (state, round number, the round's scored samples, its folder) -> the round's record fields: at least
# `trained` (false: the model is unchanged) and `summary` (its part of the printed line).
TrainRound = Callable[[RoundState, int, list, str], dict]


def play_round(state: RoundState, k: int, folder: str, previous: dict, train_round: TrainRound) -> dict:
    from alignkit.rl.rollout import derived_seed

    cfg = state.cfg
    started = time.perf_counter()
    prompts = round_prompts(state.prompts, k, cfg.prompts_per_round, cfg.sampling.seed)
    params = cfg.sampling.params(seed=derived_seed(cfg.sampling.seed, k))
    with backend_for(state) as backend:
        scored = sample_and_score(backend, prompts, params, state.reward, desc=f"round {k}: sampling")
    write_jsonl_atomic(os.path.join(folder, SAMPLES), (samples_record(item) for item in scored))
    sampled = time.perf_counter()
    fields = train_round(state, k, scored, folder)
    trained = time.perf_counter()
    # An untrained round's model is the previous round's, already measured (greedy answers repeat exactly).
    heldout = heldout_record(state) if fields["trained"] else {**previous["heldout"], "unchanged": True}
    done = time.perf_counter()
    return {"round": k, "prompts": len(prompts), **sample_stats(scored), **fields, "model": state.model_path,
            "heldout": heldout,
            "seconds": {"sampling": sampled - started, "training": trained - sampled, "heldout": done - trained,
                        "total": done - started}}


def baseline_round(state: RoundState) -> dict:
    started = time.perf_counter()
    heldout = heldout_record(state)
    return {"round": 0, "model": state.model_path, "trained": False, "summary": "starting model", "heldout": heldout,
            "seconds": {"heldout": time.perf_counter() - started, "total": time.perf_counter() - started}}


def round_line(record: dict, rounds: int) -> str:
    heldout = record["heldout"]
    parts = ", ".join(f"{name} {value:.3f}" for name, value in heldout["components"].items())
    same = " (model unchanged)" if heldout.get("unchanged") else ""
    return (f"round {record['round']}/{rounds}: {record['summary']} | held-out reward {heldout['reward_mean']:.3f}"
            f"{f' ({parts})' if parts else ''}{same} | {record['seconds']['total']:.1f}s")


# ---------------------------------------------------------------- the run

def run_rounds(cfg: RoundsConfig, *, method: str, train_round: TrainRound) -> dict:
    """Round 0 then rounds 1..cfg.rounds, skipping finished ones; returns the report (also report.json)."""
    from alignkit.config import validate_config
    from alignkit.models.loading import load_tokenizer, use_chat_template

    validate_config(cfg)  # configs built in Python never went through load_config
    prepare_output(cfg)
    prompts = read_prompt_records(cfg.prompts, skip_bad=cfg.skip_bad)
    heldout = read_prompt_records(cfg.heldout, skip_bad=cfg.skip_bad)
    if cfg.prompts_per_round > len(prompts):
        raise ConfigError(f"prompts_per_round: must be at most the number of prompts ({len(prompts)}), "
                          f"got {cfg.prompts_per_round}")
    print(f"{method}: {len(prompts)} prompts, {len(heldout)} held-out prompts, {cfg.rounds} rounds -> "
          f"{cfg.output_dir}", flush=True)
    tokenizer = use_chat_template(load_tokenizer(cfg.model.name), cfg.model.chat_template, cfg.model.name)
    state = RoundState(cfg, prompts, heldout, build_reward(cfg.rewards), tokenizer, cfg.model.name)
    try:
        records = _play_rounds(state, method, train_round)
    finally:
        if state.sampler is not None:
            state.sampler.close()  # drops a vLLM engine and its folder
    report = write_log(cfg, method, records)
    print(f"{method}: {cfg.rounds} round(s) in {cfg.output_dir} ({LOG}, {REPORT}); held-out reward "
          f"{report['start']['reward_mean']:.3f} -> {report['final']['reward_mean']:.3f}; final model "
          f"{report['final_model']}", flush=True)
    return report


def _play_rounds(state: RoundState, method: str, train_round: TrainRound) -> list[dict]:
    cfg = state.cfg
    records: list[dict] = []
    for k in range(cfg.rounds + 1):
        folder = os.path.join(cfg.output_dir, f"round_{k}")
        finished = read_round(folder, k)
        if finished is not None:
            print(f"round {k}/{cfg.rounds}: finished before ({os.path.join(folder, ROUND)}), skipped", flush=True)
            state.model_path, state.model = finished["model"], None
            records.append(finished)
            continue
        remove_leftovers(folder)  # files a kill interrupted mid-write
        os.makedirs(folder, exist_ok=True)
        record = baseline_round(state) if k == 0 else play_round(state, k, folder, records[-1], train_round)
        write_json_atomic(os.path.join(folder, ROUND), record, allow_nan=True)
        records.append(record)
        write_log(cfg, method, records)
        print(round_line(record, cfg.rounds), flush=True)
    return records


def read_round(folder: str, k: int) -> dict | None:
    path = os.path.join(folder, ROUND)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if record.get("round") != k:
        raise ConfigError(f"{path}: holds round {record.get('round')!r}, not round {k}")
    return record


def write_log(cfg: RoundsConfig, method: str, records: list[dict]) -> dict:
    write_jsonl_atomic(os.path.join(cfg.output_dir, LOG), records)
    report = {"method": method, "output_dir": cfg.output_dir, "rounds": len(records) - 1,
              "start": records[0]["heldout"], "final": records[-1]["heldout"], "final_model": records[-1]["model"],
              "seconds": sum(r["seconds"]["total"] for r in records), "records": records}
    write_json_atomic(os.path.join(cfg.output_dir, REPORT), report, allow_nan=True)
    return report


# ---------------------------------------------------------------- the output folder

def prepare_output(cfg: RoundsConfig) -> None:
    """Start over (if_exists=overwrite), or check a resumed folder was written by this config; save it."""
    out = cfg.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"output_dir: {out} is a file, not a folder")
    saved = os.path.join(out, CONFIG)
    if cfg.if_exists == "overwrite" and os.path.isdir(out):
        for name in os.listdir(out):
            path = os.path.join(out, name)
            if _ROUND_DIR.fullmatch(name) and os.path.isdir(path):
                shutil.rmtree(path)
            elif name in (CONFIG, LOG, REPORT):
                os.remove(path)
    elif os.path.exists(saved):
        with open(saved, encoding="utf-8") as f:
            before = yaml.safe_load(f) or {}
        now = yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))  # the same types as the file's
        changed = [key for key in differences(before, now) if key not in RESUME_FREE
                   and not key.endswith((".progress", ".threads"))]
        if changed:
            key = changed[0]
            raise ConfigError(f"output_dir: {out} holds rounds of another config ({key} was {_lookup(before, key)!r},"
                              f" now {_lookup(now, key)!r}); rerun with the same config (more rounds are fine), "
                              "another output_dir, or if_exists=overwrite")
    os.makedirs(out, exist_ok=True)
    save_config(cfg, saved)


def differences(before: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees."""
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for key in list(before) + [k for k in now if k not in before]:
            out += differences(before.get(key), now.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    same = before == now or (isinstance(before, float) and isinstance(now, float)
                             and math.isnan(before) and math.isnan(now))
    return [] if same else [prefix]


def _lookup(tree: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def adopt_finished_training(state: RoundState, k: int, run_dir: str) -> int | None:
    """When round k's training in `run_dir` finished before the run stopped (its final/ is complete), load
    that model as the current one and return the training's optimizer steps; else None (train it)."""
    final = os.path.join(run_dir, "final")
    if not os.path.isdir(final):
        return None
    print(f"round {k}: training finished before ({final}), loading it", flush=True)
    state.adopt(final, load=True)
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        return json.load(f)["steps"]
