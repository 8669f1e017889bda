"""Best-of-n at inference: sample n responses per prompt, score each with a reward (a reward model, a
verifier, a judge: any `alignkit.rewards` source), keep the best.

Selection. The chosen response of a prompt is its highest-reward sample; on a tie, the first sampled
(lowest sample index). A fixed rule, so a rerun chooses the same response, and the same rule the curve
below counts ties by.

Reward against k. One sampling pass at the largest n gives every smaller k. The expected reward of
best-of-k is estimated from the n samples as the expected best of k of them drawn without replacement,
computed exactly: with the samples ordered from worst to best, the i-th (1-based) is the best of a
k-subset when the subset holds it and k-1 of the i-1 below it, so E = sum_i r_(i) C(i-1, k-1) / C(n, k).
Every k-subset of n independent samples is itself k independent samples, so this is unbiased for
best-of-k from the policy, and it uses all n samples where "the first k samples" would throw n-k away.
The same weights give any quantity of the chosen sample, such as a reward component (the `format`
check's best-of-k mean is the held-out compliance of best-of-k).

KL. Each row of the curve carries the analytic KL(best-of-k || policy) = log k - (k-1)/k (Stiennon et
al. 2020): exact when no two responses tie in reward, an upper bound otherwise (Beirami et al. 2024).

Failures. A sample the reward could not score keeps the reward's `failure_reward` (it is selected and
counted by that value, as the reward's config says) and its reason, and is counted in the report. A
prompt none of whose samples could be scored has no choice to make: it is left out of best.jsonl and
of the curve, and listed in the report by source.

Outputs in `output_dir`: samples.jsonl (every sample of a prompt with its reward, in the layout preference
loaders read as a scored ranking, plus `best`, the chosen sample's index), best.jsonl (per prompt the
chosen response in `alignkit generate`'s layout, with its `reward`), report.json (the curve, counts and
wall time), and the curve printed as a table. With `sampling.cache` set, completions go through a SQLite
cache, so a rerun, or a job resumed after a kill, replays what was sampled instead of sampling again.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from alignkit.config import require, require_number, validate_config
from alignkit.data.readers import DataSpec
from alignkit.models.config import ModelConfig
from alignkit.reward_sampling.candidates import (PolicySampler, PromptSamples, SamplingConfig, sample_and_score,
                                                 samples_record, with_sampling_cache)
from alignkit.rewards.spec import RewardSpec, validate_reward_specs

SAMPLES, BEST, REPORT = "samples.jsonl", "best.jsonl", "report.json"


@dataclass
class BestOfNConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: list[DataSpec] = field(default_factory=list)  # prompt files; each record's other fields reach the reward
    skip_bad: bool = False  # skip bad prompt records instead of stopping at the first
    max_prompts: int = 0  # use the first this many prompts; 0: all
    rewards: list[RewardSpec] = field(default_factory=list)  # e.g. [{kind: format}, {kind: rm, path: runs/rm/final}]
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=16))  # n: the largest n of the curve
    device: str = ""  # where the model samples (sampling.backend=local): cuda, cpu, ...; empty: cuda when there is one
    output_dir: str = "runs/best_of_n"  # samples.jsonl, best.jsonl and report.json go here
    progress: bool = True  # progress bar while sampling

    def validate(self, where: str = "") -> None:
        """Prompts, rewards and outputs (model and sampling check themselves)."""
        require(len(self.prompts) > 0, where, "prompts", "a list of at least one prompt file", self.prompts)
        require_number(where, "max_prompts", self.max_prompts, low=0, whole=True)
        validate_reward_specs(self.rewards, f"{where}.rewards" if where else "rewards")
        require(isinstance(self.output_dir, str) and bool(self.output_dir.strip()), where, "output_dir",
                "a folder for the outputs", self.output_dir)
        # Nothing trains here: an adapter is loaded by naming its folder as model.name.
        require(not self.model.lora.enabled, "model.lora", "enabled",
                "false (best-of-n trains nothing; name an adapter folder as model.name to sample from it)",
                self.model.lora.enabled)


# ---------------------------------------------------------------- selection and the curve (pure)

def choose_best(rewards: Sequence[float]) -> int:
    """Index of the highest reward; on a tie the first sampled."""
    if not rewards:
        raise ValueError("choose_best: no rewards")
    return max(range(len(rewards)), key=lambda i: rewards[i])  # max keeps the first of equal keys


def worst_to_best(rewards: Sequence[float]) -> list[int]:
    """Sample indices from worst to best, ties ranked as `choose_best` breaks them (earlier is better), so
    the best of any subset is the one of it that comes last here."""
    return sorted(range(len(rewards)), key=lambda i: (rewards[i], -i))


def best_of_k_weights(n: int, k: int) -> list[float]:
    """P(the i-th of n samples, worst to best, is the best of a uniformly drawn k-subset), i = 1..n:
    C(i-1, k-1) / C(n, k). Exact integer binomials, one rounding each."""
    if not 1 <= k <= n:
        raise ValueError(f"best-of-k needs 1 <= k <= n, got k={k}, n={n}")
    total = math.comb(n, k)
    return [math.comb(i - 1, k - 1) / total for i in range(1, n + 1)]


def expected_best_of_k(rewards: Sequence[float], k: int, values: Sequence[float] | None = None) -> float:
    """Expected `values` of the chosen sample when best-of-k draws k of these n samples without
    replacement; `values` defaults to the rewards, giving the expected maximum of k of them."""
    values = rewards if values is None else values
    if len(values) != len(rewards):
        raise ValueError(f"expected_best_of_k: {len(values)} values for {len(rewards)} rewards")
    weights = best_of_k_weights(len(rewards), k)
    return sum(w * values[i] for w, i in zip(weights, worst_to_best(rewards)))


def best_of_k_kl(k: int) -> float:
    """The analytic KL(best-of-k || policy) in nats: log k - (k-1)/k."""
    if k < 1:
        raise ValueError(f"best-of-k needs k >= 1, got {k}")
    return math.log(k) - (k - 1) / k


def report_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself when it is not a power of two."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def best_of_k_curve(rewards: Sequence[Sequence[float]], components: dict[str, Sequence[Sequence[float]]],
                    ks: Sequence[int]) -> list[dict]:
    """Per k: the mean over prompts of the expected best-of-k reward, of each component of the chosen
    sample, and the analytic KL. `rewards[p]` are prompt p's sample rewards; `components[name][p]` the same
    samples' values of one component."""
    if not rewards:
        raise ValueError("best_of_k_curve: no prompts")

    def mean_over_prompts(k: int, values: Sequence[Sequence[float]] | None) -> float:
        per_prompt = [expected_best_of_k(r, k, None if values is None else values[p]) for p, r in enumerate(rewards)]
        return sum(per_prompt) / len(per_prompt)

    return [{"k": k, "reward": mean_over_prompts(k, None), "kl": best_of_k_kl(k),
             "components": {name: mean_over_prompts(k, values) for name, values in components.items()}}
            for k in ks]


def curve_table(curve: list[dict]) -> str:
    names = list(curve[0]["components"]) if curve else []
    lines = [f"{'k':>5}  {'reward':>9}  {'gain':>8}  {'KL nats':>7}" + "".join(f"  {n:>10}" for n in names)]
    previous = None
    for row in curve:
        gain = "" if previous is None else f"{row['reward'] - previous:+.4f}"
        lines.append(f"{row['k']:>5}  {row['reward']:>9.4f}  {gain:>8}  {row['kl']:>7.3f}"
                     + "".join(f"  {row['components'][n]:>10.4f}" for n in names))
        previous = row["reward"]
    return "\n".join(lines)


# ---------------------------------------------------------------- records

def best_record(item: PromptSamples, index: int, model_name: str) -> dict:
    """The chosen sample in `alignkit generate`'s layout (messages / prompt / response), with its reward,
    the record's own fields (what a reward reads, e.g. `format`), its sample index and failure if any."""
    sample = item.samples[index]
    meta = {k: v for k, v in item.prompt.metadata.items() if k not in ("messages", "prompt", "reference")}
    return {**meta, "messages": item.prompt.messages, "prompt": item.prompt.messages[-1]["content"],
            "response": sample.text, "reward": sample.reward, "failure": sample.failure, "sample_index": index,
            "reward_components": dict(sample.components), "finish_reason": sample.finish_reason,
            "completion_tokens": sample.num_tokens, "model": model_name}


def summarize(scored: list[PromptSamples], n: int) -> tuple[dict, list[int | None]]:
    """The report (without timings) and each prompt's chosen index (None: no sample could be scored)."""
    chosen = [None if all(s.failure is not None for s in item.samples) else choose_best(item.rewards)
              for item in scored]
    kept = [item for item, index in zip(scored, chosen) if index is not None]
    names = list(kept[0].samples[0].components) if kept else []
    curve = best_of_k_curve([item.rewards for item in kept],
                            {name: [[s.components[name] for s in item.samples] for item in kept] for name in names},
                            report_ks(n)) if kept else []
    samples = [s for item in scored for s in item.samples]
    report = {
        "method": "best-of-n", "prompts": len(scored), "n": n, "samples": len(samples),
        "scored_prompts": len(kept),  # prompts with a choice: best.jsonl's records, and the curve's prompts
        "failed_samples": sum(s.failure is not None for s in samples),
        "chosen_failed": sum(index is not None and item.samples[index].failure is not None
                             for item, index in zip(scored, chosen)),
        "all_failed": [item.prompt.metadata.get("source", "") for item, index in zip(scored, chosen) if index is None],
        "truncated": sum(s.finish_reason == "length" for s in samples) / max(len(samples), 1),
        "curve": curve,
    }
    return report, chosen


# ---------------------------------------------------------------- the run

def _model_backend(cfg: BestOfNConfig) -> tuple:
    """(backend, its PolicySampler) on the model cfg.model names: LocalBackend on it, or a vLLM engine started
    from it (an adapter folder comes merged), by sampling.backend."""
    from alignkit.generation.model_id import local_model_id
    from alignkit.models.loading import load_model, load_tokenizer, use_chat_template
    from alignkit.rewards.reward_model import default_device

    # The tokenizer first: a missing chat template is reported before the model loads.
    tokenizer = use_chat_template(load_tokenizer(cfg.model.name), cfg.model.chat_template, cfg.model.name)
    model, _ = load_model(cfg.model.name, dtype=cfg.model.dtype)
    device = (cfg.device or default_device()) if cfg.sampling.backend == "local" else None
    sampler = PolicySampler(tokenizer, cfg.sampling)
    return sampler.backend(model, 0, model_id=local_model_id(cfg.model.name, cfg.model.dtype), device=device), sampler


def run_best_of_n(cfg: BestOfNConfig, *, backend=None, judge_backend=None) -> dict:
    """Sample, score and choose; write samples.jsonl, best.jsonl and report.json in cfg.output_dir; return
    the report. `backend` replaces the model cfg.model names (tests, or a caller holding a model);
    `judge_backend` replaces a judge reward's backend."""
    from alignkit.paths import check_output_dir
    from alignkit.rewards.spec import build_reward
    from alignkit.data.prompts import read_prompt_records

    started = time.perf_counter()
    # Everything that can be wrong with the config, the outputs or the prompts fails before a model loads.
    validate_config(cfg)
    check_output_dir(cfg.output_dir, "output_dir")
    prompts = read_prompt_records(cfg.prompts, skip_bad=cfg.skip_bad)
    prompts = prompts[:cfg.max_prompts] if cfg.max_prompts else prompts
    if not prompts:
        raise ValueError(f"prompts: no prompt to answer in {', '.join(spec.path for spec in cfg.prompts)}")
    print(f"{len(prompts)} prompts, {cfg.sampling.n} samples each", flush=True)
    reward = build_reward(cfg.rewards, judge_backend=judge_backend)
    policy_sampler = None
    if backend is None:
        backend, policy_sampler = _model_backend(cfg)
    try:
        return _sample_and_choose(cfg, started, prompts, reward, backend)
    finally:
        if policy_sampler is not None:
            policy_sampler.close()  # drops a vLLM engine and its folder


def _sample_and_choose(cfg: BestOfNConfig, started: float, prompts, reward, base) -> dict:
    from alignkit.atomic_write import write_json_atomic, write_jsonl_atomic

    sampler = with_sampling_cache(base, cfg.sampling)
    try:
        sampling_started = time.perf_counter()
        scored = sample_and_score(sampler, prompts, cfg.sampling.params(), reward, progress=cfg.progress,
                                  desc="best-of-n")
        sampling_s = time.perf_counter() - sampling_started
    finally:
        if sampler is not base:  # the cache opened here
            sampler.close()
    report, chosen = summarize(scored, cfg.sampling.n)
    os.makedirs(cfg.output_dir, exist_ok=True)
    paths = {name: os.path.join(cfg.output_dir, name) for name in (SAMPLES, BEST, REPORT)}
    write_jsonl_atomic(paths[SAMPLES], [{**samples_record(item), "best": index} for item, index in zip(scored, chosen)])
    write_jsonl_atomic(paths[BEST], [best_record(item, index, cfg.model.name)
                                     for item, index in zip(scored, chosen) if index is not None])
    report.update(model=cfg.model.name, sampling_s=sampling_s, wall_s=time.perf_counter() - started,
                  cache=None if sampler is base else {"hits": sampler.stats.hits, "misses": sampler.stats.misses})
    write_json_atomic(paths[REPORT], report)
    if not report["curve"]:
        first = next(s.failure for item in scored for s in item.samples)
        raise ValueError(f"the reward could not score any sample of any prompt (e.g. {first}); every sample and "
                         f"its failure is in {paths[SAMPLES]}")
    _print_summary(report, paths)
    return report


def _print_summary(report: dict, paths: dict[str, str]) -> None:
    print(f"best-of-k on {report['scored_prompts']} prompts ({report['n']} samples each; every k < n is "
          f"estimated from the same samples)")
    print(curve_table(report["curve"]))
    if report["failed_samples"]:
        print(f"{report['failed_samples']} of {report['samples']} samples could not be scored (they keep the "
              f"reward's failure_reward); the chosen sample failed for {report['chosen_failed']} prompts")
    if report["all_failed"]:
        print(f"{len(report['all_failed'])} prompts had no sample the reward could score, and are left out of "
              f"{paths[BEST]} and the curve: {', '.join(report['all_failed'][:5])}"
              + (" ..." if len(report["all_failed"]) > 5 else ""))
    print(f"wrote {paths[BEST]} (chosen responses), {paths[SAMPLES]} (every sample with its reward) and "
          f"{paths[REPORT]} in {report['wall_s']:.1f}s")
