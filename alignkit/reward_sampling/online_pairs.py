"""`OnlinePairSource`: the BatchSource of online DPO. Every optimizer step it samples fresh preference pairs
from the policy as it is at that step, and serves them to the one training loop as the pairwise objective's
micro-batches.

One step: take the next `prompts_per_step` prompts of a seeded prompt stream (rl.prompts.PromptStream);
sample `sampling.n` (k >= 2) completions of each from the policy (candidates.PolicySampler: LocalBackend on it,
or with sampling.backend=vllm a vLLM engine given the policy's weights after every step), seeded by
rl.rollout.derived_seed(sampling.seed, step, attempt), so a rerun or a resumed run samples the same tokens;
score them with the reward (candidates.sample_and_score); pair each prompt's samples by reward with
data.preference.ranking_to_pairs under `pair_rule` (best_vs_worst by default, as in Guo et al. 2024);
tokenize the pairs with data.pref_examples.build_examples, exactly as `alignkit dpo` does a scored file;
split them into (at most) `grad_accum` micro-batches collated by the objective, and attach each
sequence's reference log-prob, computed now, in that micro-batch, by training.reference.LiveReference: the
frozen starting policy (or the LoRA policy with its adapter off). The loss then computes the policy's
log-probs of the same packed row, so at the first step the two agree exactly and DPO's implicit rewards
are 0.

Choices, each a place where a guess would make a silently wrong pair:
* A sample the reward could not score (`failure` set; e.g. a judge reply without a verdict) takes no part
  in any pair, neither chosen nor rejected: its `failure_reward` is a stand-in for RL's averages, not a
  judgement of its text. It still counts in `reward_mean` with that stand-in (as the reward reports it),
  and in `failed_samples`.
* Equal rewards never make a pair (ranking_to_pairs), nor do two samples with the same text, nor an empty
  one (selection.pair_samples, the pairing iterative DPO uses too). A prompt whose scored samples all tie
  gives no pair and is counted in `tied_prompts`.
* A pair longer than `max_length` tokens (prompt + either response) is dropped, never cut: a cut response
  would train on an ending the reward never saw. Counted in `overlong_pairs`.
* Samples cut at max_tokens are ranked like the rest: the reward decides (the demo's format check fails
  most of them). Their re-tokenized text ends with the template's end of turn, as any scored file does;
  `truncated_rate` shows how common they are.
* A step needs at least one pair. When every prompt tied (or failed), the next prompts of the stream are
  sampled, up to `max_resamples` more times, then the step stops with an error naming the cause; a
  micro-batch is never empty. A step with fewer pairs than grad_accum has one pair per micro-batch.

The DPO log-probs are at temperature 1 whatever the sampling temperature (the policy's own distribution,
as TRL's online DPO did). State: the stream's position and the step last sampled; the samples themselves
come again from the restored weights and the same seeds, so an interrupted run resumes exactly. Runs in one
process: the stream is not split between processes.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from alignkit.data.pref_examples import PrefExample, build_examples, pair_items
from alignkit.data.preference import (
    PAIR_RULES,
    PreferencePair,
)
from alignkit.data.prompts import PromptRecord
from alignkit.reward_sampling.candidates import (
    PolicySampler,
    PromptSamples,
    SamplingConfig,
    ScoredSample,
    sample_and_score,
)
from alignkit.reward_sampling.selection import pair_samples
from alignkit.rewards.interface import Reward, RewardResult
from alignkit.rl.prompts import PromptStream, as_prompt_records
from alignkit.rl.rollout import derived_seed
from alignkit.training.distributed import rank_world
from alignkit.training.reference import LiveReference


@dataclass
class OnlinePair:
    pair: PreferencePair  # prompt, chosen and rejected as messages: what build_examples tokenizes
    chosen: ScoredSample
    rejected: ScoredSample
    prompt: PromptRecord

    @property
    def margin(self) -> float:
        return self.chosen.reward - self.rejected.reward


def prompt_pairs(item: PromptSamples, rule: str, threshold: float = 0.0) -> list[OnlinePair]:
    """The pairs `rule` makes of one prompt's samples (chosen always the higher reward), by the one pairing
    rule the sampling methods share (selection.pair_samples): failed and empty samples and repeated texts
    take no part; truncated ones are ranked like the rest."""
    result = pair_samples(item.samples, rule, threshold=threshold, keep_truncated=True)
    return [OnlinePair(PreferencePair(item.prompt.messages, [{"role": "assistant", "content": item.samples[c].text}],
                                      [{"role": "assistant", "content": item.samples[r].text}],
                                      source=str(item.prompt.metadata.get("source", "")),
                                      margin=item.samples[c].reward - item.samples[r].reward),
                       item.samples[c], item.samples[r], item.prompt)
            for c, r in result.pairs]


class _TimedReward:
    """The reward, with the seconds spent scoring added up (so generation time can be told apart)."""

    def __init__(self, reward: Reward):
        self.reward, self.name, self.seconds = reward, reward.name, 0.0

    def score(self, samples) -> RewardResult:
        started = time.perf_counter()
        try:
            return self.reward.score(samples)
        finally:
            self.seconds += time.perf_counter() - started


class OnlinePairSource:
    """Preference pairs sampled from the current policy at every step (see the module docstring)."""

    def __init__(self, prompts: Sequence, tokenizer, reward: Reward, sampling: SamplingConfig,
                 collate: Callable[[list[PrefExample]], dict], *, prompts_per_step: int, grad_accum: int = 1,
                 reference: LiveReference | None = None, pair_rule: str = "best_vs_worst",
                 pair_threshold: float = 0.0, max_length: int = 1024, max_resamples: int = 8,
                 shuffle_prompts: bool = True, sampler: PolicySampler | None = None):
        if rank_world()[1] != 1:
            raise ValueError("online DPO runs as one process: its prompt stream is not split between processes")
        if sampling.n < 2:
            raise ValueError(f"online DPO pairs samples of one prompt: sampling.n must be >= 2, got {sampling.n}")
        if pair_rule not in PAIR_RULES:
            raise ValueError(f"pair_rule must be one of {', '.join(PAIR_RULES)}, not {pair_rule!r}")
        self.prompts = as_prompt_records(prompts)
        self.tokenizer, self.reward, self.sampling, self.collate = tokenizer, _TimedReward(reward), sampling, collate
        self.prompts_per_step, self.grad_accum, self.reference = prompts_per_step, grad_accum, reference
        self.pair_rule, self.pair_threshold = pair_rule, pair_threshold
        self.max_length, self.max_resamples = max_length, max_resamples
        self.stream = PromptStream(len(self.prompts), sampling.seed, shuffle=shuffle_prompts)
        self.step = -1  # the step last sampled
        self.last_stats: dict = {}  # the latest step's statistics, for the log
        self.last_pairs: list[OnlinePair] = []  # the pairs it trained on, in micro-batch order
        self.last_samples: list[PromptSamples] = []  # every sample it drew, in prompt order
        self.sampler = sampler or PolicySampler(tokenizer, sampling)

    # ----- BatchSource -----

    def next_step(self, step: int, model) -> list[dict]:
        started = time.perf_counter()
        self.reward.seconds = 0.0
        kept: list[tuple[OnlinePair, PrefExample]] = []
        samples: list[PromptSamples] = []
        counts: Counter = Counter()
        for attempt in range(self.max_resamples + 1):
            prompts = [self.prompts[i] for i in self.stream.take(self.prompts_per_step)]
            params = self.sampling.params(seed=derived_seed(self.sampling.seed, step, attempt))
            # The loop calls at `step` after `step` optimizer steps: a vLLM engine gets the weights when it changes.
            backend = self.sampler.backend(model, step)
            items = sample_and_score(backend, prompts, params, self.reward, progress=False)
            samples += items
            for item in items:
                kept += self._pairs_of(item, counts)
            if kept:
                break
        else:
            raise ValueError(self._no_pair_error(step, counts))
        sample_seconds = time.perf_counter() - started
        t0 = time.perf_counter()
        micro = self._micro_batches(model, [example for _, example in kept])
        self.step, self.last_samples, self.last_pairs = step, samples, [pair for pair, _ in kept]
        self.last_stats = _step_stats(samples, self.last_pairs, counts, attempt)
        self.last_stats.update(gen_seconds=sample_seconds - self.reward.seconds, score_seconds=self.reward.seconds,
                               reference_seconds=time.perf_counter() - t0)
        return micro

    def state_dict(self) -> dict:
        return {"position": self.stream.position, "step": self.step, "stats": dict(self.last_stats)}

    def load_state_dict(self, state: dict) -> None:
        self.stream.position, self.step = int(state["position"]), int(state["step"])
        self.last_stats = dict(state["stats"])
        self.sampler.invalidate()  # the model's weights come from the same checkpoint

    def close(self) -> None:
        """Drop the vLLM engine (and its folder), if there is one."""
        self.sampler.close()

    def steps_per_epoch(self) -> int:
        """Optimizer steps per pass over the prompts (a step that resamples takes more)."""
        return math.ceil(len(self.prompts) / self.prompts_per_step)

    def epoch(self) -> float:
        return self.stream.epoch()

    # ----- pairs -----

    def _pairs_of(self, item: PromptSamples, counts: Counter) -> list[tuple[OnlinePair, PrefExample]]:
        scored = sum(s.failure is None for s in item.samples)
        counts["failed_samples"] += len(item.samples) - scored
        pairs = prompt_pairs(item, self.pair_rule, self.pair_threshold)
        if not pairs and scored >= 2:
            counts["tied_prompts"] += 1
        out = []
        for pair in pairs:
            examples, _ = build_examples(pair_items([pair.pair]), self.tokenizer, max_length=self.max_length,
                                         overlong="drop")
            if examples:
                out.append((pair, examples[0]))
            else:
                counts["overlong_pairs"] += 1
        return out

    def _no_pair_error(self, step: int, counts: Counter) -> str:
        tries = self.max_resamples + 1
        return (f"online DPO step {step + 1}: no preference pair in {tries} draw(s) of {self.prompts_per_step} "
                f"prompts x {self.sampling.n} samples ({counts['tied_prompts']} prompts tied, "
                f"{counts['failed_samples']} samples the reward could not score, {counts['overlong_pairs']} pairs "
                f"over max_length); the reward does not tell these samples apart: raise sampling.temperature, "
                f"sampling.n or prompts_per_step, or use a finer reward")

    def _micro_batches(self, model, examples: list[PrefExample]) -> list[dict]:
        """The examples in at most grad_accum contiguous micro-batches, each with its reference log-probs."""
        chunks = torch.arange(len(examples)).tensor_split(min(self.grad_accum, len(examples)))
        micro = []
        for chunk in chunks:
            batch = self.collate([examples[i] for i in chunk.tolist()])
            if self.reference is not None:
                batch["reference"] = self.reference.logps(model, batch).detach().float().cpu()
            micro.append(batch)
        return micro


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _step_stats(samples: list[PromptSamples], pairs: list[OnlinePair], counts: Counter, resamples: int) -> dict:
    flat = [s for item in samples for s in item.samples]
    stats = {"reward_mean": _mean([s.reward for s in flat]), "pairs": len(pairs),
             "pair_reward_margin": _mean([p.margin for p in pairs]),
             "tied_prompts": counts["tied_prompts"], "failed_samples": counts["failed_samples"],
             "overlong_pairs": counts["overlong_pairs"], "prompts_sampled": len(samples), "resamples": resamples,
             "completion_len_mean": _mean([s.num_tokens for s in flat]),
             "truncated_rate": _mean([float(s.finish_reason == "length") for s in flat])}
    for name in (flat[0].components if flat else {}):
        stats[f"reward/{name}"] = _mean([s.components[name] for s in flat])
    return stats
