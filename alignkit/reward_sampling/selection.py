"""Which of one prompt's scored samples a round trains on: the keep rules of expert iteration and the pair
rule of iterative DPO, as pure functions of the samples (tested against their definitions).

A sample is usable only when
- its reward is a real score: a sample the reward could not score carries the reward's configured
  `failure_reward`, a placeholder that must never decide what is learnt;
- it has text: an empty answer cannot be an assistant turn to train on;
- it ended by itself, unless `keep_truncated`: a sample cut at max_tokens gets the end-of-turn token
  appended in training, which teaches the model to stop mid-answer;
- (with `distinct`, always for pairs) its text is not a copy of an earlier sample of the same prompt:
  copies would weight one answer twice, and a copy scored differently (a noisy judge) would pair a text
  with itself.

Keep rules, on the usable samples of one prompt:
- best: the highest-reward sample; on a tie the first sampled (RAFT; the rejection sampling of Llama 2).
- threshold: every sample with reward >= threshold (ReST-EM keeps every sample its binary reward passes).
- top_k: the k highest-reward samples, ties broken by sampling order.
`min_reward` drops samples below it before any rule: the best of n bad answers is still a bad answer.

Pairs: the usable samples become a `data.preference.Ranking` by reward and `ranking_to_pairs` applies the
pair rule (best_vs_worst by default), so a tie never makes a pair and the rule is the one `alignkit dpo`
applies to a scored file.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from alignkit.data.preference import Ranking, ranking_to_pairs
from alignkit.reward_sampling.candidates import ScoredSample

SELECTION_RULES = ("best", "threshold", "top_k")


def drop_reason(sample: ScoredSample, *, keep_truncated: bool) -> str | None:
    """Why `sample` cannot be trained on (failure, empty, truncated), or None when it can."""
    if sample.failure is not None:
        return "failure"
    if not sample.text.strip():
        return "empty"
    if sample.finish_reason == "length" and not keep_truncated:
        return "truncated"
    return None


def usable(samples: Sequence[ScoredSample], *, keep_truncated: bool, distinct: bool,
           min_reward: float | None = None) -> tuple[list[int], Counter]:
    """(indices of the usable samples in sampling order, count of the others by reason)."""
    indices, dropped, seen = [], Counter(), set()
    for index, sample in enumerate(samples):
        reason = drop_reason(sample, keep_truncated=keep_truncated)
        if reason is None and distinct and sample.text in seen:
            reason = "duplicate"
        if reason is None and min_reward is not None and sample.reward < min_reward:
            reason = "below_min_reward"
        if reason is not None:
            dropped[reason] += 1
            continue
        seen.add(sample.text)
        indices.append(index)
    return indices, dropped


def best_first(samples: Sequence[ScoredSample], indices: Sequence[int]) -> list[int]:
    """`indices` from highest to lowest reward; equal rewards keep sampling order (sorted is stable)."""
    return sorted(indices, key=lambda index: -samples[index].reward)


@dataclass
class Kept:
    indices: list[int]  # kept samples: best first for best and top_k, sampling order for threshold
    dropped: Counter = field(default_factory=Counter)  # samples that were not usable, by reason


def select_samples(samples: Sequence[ScoredSample], rule: str, *, threshold: float = 0.0, k: int = 1,
                   min_reward: float | None = None, keep_truncated: bool = False, distinct: bool = True) -> Kept:
    """The samples of one prompt that `rule` keeps (see the module docstring)."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {', '.join(SELECTION_RULES)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    indices, dropped = usable(samples, keep_truncated=keep_truncated, distinct=distinct, min_reward=min_reward)
    if rule == "threshold":
        return Kept([index for index in indices if samples[index].reward >= threshold], dropped)
    return Kept(best_first(samples, indices)[:1 if rule == "best" else k], dropped)


@dataclass
class Pairs:
    pairs: list[tuple[int, int]]  # (chosen, rejected) sample indices; chosen's reward is the higher
    outcome: str  # paired | tied (usable rewards all equal) | too_few (< 2 usable) | below_margin
    dropped: Counter = field(default_factory=Counter)  # samples that were not usable, by reason


def pair_samples(samples: Sequence[ScoredSample], rule: str, *, threshold: float = 0.0,
                 keep_truncated: bool = False) -> Pairs:
    """(chosen, rejected) pairs of one prompt's usable samples under a `data.preference` pair rule."""
    indices, dropped = usable(samples, keep_truncated=keep_truncated, distinct=True)
    if len(indices) < 2:
        return Pairs([], "too_few", dropped)
    # One response object per usable sample: the pairs come back holding these objects, read back by identity.
    responses = [[{"role": "assistant", "content": samples[index].text}] for index in indices]
    sample_of = {id(response): index for response, index in zip(responses, indices)}
    # The rule looks at scores alone; the prompt plays no part in it.
    ranking = Ranking([], responses, [samples[index].reward for index in indices])
    pairs = [(sample_of[id(p.chosen)], sample_of[id(p.rejected)])
             for p in ranking_to_pairs(ranking, rule, threshold=threshold)]
    if pairs:
        return Pairs(pairs, "paired", dropped)
    tied = len({samples[index].reward for index in indices}) == 1
    return Pairs([], "tied" if tied else "below_margin", dropped)
