"""The keep rules of expert iteration and the pair rule of iterative DPO, against their definitions: hand
cases for each edge (ties, failures, truncation, empty and repeated texts) and seeded random cases checked
against the rules written out plainly."""
from __future__ import annotations

import itertools
import random

import pytest

from alignkit.reward_sampling.candidates import ScoredSample
from alignkit.reward_sampling.selection import drop_reason, pair_samples, select_samples


def s(text: str, reward: float, *, failure: str | None = None, cut: bool = False) -> ScoredSample:
    return ScoredSample(text, reward, failure, "length" if cut else "stop")


def test_best_is_the_highest_usable_reward_and_a_tie_goes_to_the_first():
    samples = [s("a", 1.0), s("b", 3.0), s("c", 3.0), s("d", 2.0)]
    assert select_samples(samples, "best").indices == [1]


def test_failures_truncated_and_empty_samples_are_never_kept_by_default():
    samples = [s("fail", 9.0, failure="no verdict"), s("cut", 8.0, cut=True), s("  ", 7.0), s("ok", 1.0)]
    kept = select_samples(samples, "best")
    assert kept.indices == [3]
    assert kept.dropped == {"failure": 1, "truncated": 1, "empty": 1}
    assert select_samples(samples, "best", keep_truncated=True).indices == [1]
    assert drop_reason(samples[1], keep_truncated=True) is None


def test_threshold_keeps_every_usable_sample_at_or_above_it_in_sampling_order():
    samples = [s("a", 0.5), s("b", 1.0), s("c", 2.0, failure="x"), s("d", 1.5), s("e", 0.99)]
    assert select_samples(samples, "threshold", threshold=1.0).indices == [1, 3]


def test_top_k_keeps_the_k_best_ties_by_order_and_all_when_fewer():
    samples = [s("a", 1.0), s("b", 2.0), s("c", 1.0), s("d", 0.0)]
    assert select_samples(samples, "top_k", k=2).indices == [1, 0]
    assert select_samples(samples, "top_k", k=9).indices == [1, 0, 2, 3]


def test_min_reward_is_a_floor_under_every_rule():
    samples = [s("a", 0.2), s("b", 0.4)]
    for rule in ("best", "threshold", "top_k"):
        kept = select_samples(samples, rule, min_reward=0.5, threshold=-1.0 if rule == "threshold" else 0.0, k=2)
        assert kept.indices == [] and kept.dropped == {"below_min_reward": 2}


def test_distinct_counts_a_repeated_text_once():
    samples = [s("same", 1.0), s("same", 1.0), s("other", 0.5)]
    assert select_samples(samples, "top_k", k=3).indices == [0, 2]
    assert select_samples(samples, "top_k", k=3, distinct=False).indices == [0, 1, 2]


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="unknown selection rule"):
        select_samples([s("a", 1.0)], "worst")
    with pytest.raises(ValueError, match="k must be"):
        select_samples([s("a", 1.0)], "top_k", k=0)


def random_samples(rng: random.Random, n: int) -> list[ScoredSample]:
    """Few distinct rewards and texts, so ties and repeats are common."""
    return [ScoredSample(rng.choice(["", "x", "yy", "zzz", "w w"]), float(rng.randint(-1, 2)),
                         "no score" if rng.random() < 0.2 else None, "length" if rng.random() < 0.2 else "stop")
            for _ in range(n)]


def usable_by_definition(samples, keep_truncated):
    seen, out = set(), []
    for i, x in enumerate(samples):
        if x.failure is None and x.text.strip() and (keep_truncated or x.finish_reason != "length") \
                and x.text not in seen:
            seen.add(x.text)
            out.append(i)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_match_the_definitions(seed):
    rng = random.Random(seed)
    for _ in range(100):
        samples = random_samples(rng, rng.randint(1, 7))
        keep_truncated = rng.random() < 0.5
        ok = usable_by_definition(samples, keep_truncated)
        rewards = [samples[i].reward for i in ok]
        best = select_samples(samples, "best", keep_truncated=keep_truncated).indices
        assert best == ([ok[rewards.index(max(rewards))]] if ok else [])
        above = select_samples(samples, "threshold", threshold=1.0, keep_truncated=keep_truncated).indices
        assert above == [i for i in ok if samples[i].reward >= 1.0]
        top = select_samples(samples, "top_k", k=2, keep_truncated=keep_truncated).indices
        assert len(top) == min(2, len(ok)) and set(top) <= set(ok)
        # no sample left out beats a kept one, and among equals the earlier is kept
        for kept, left in itertools.product(top, set(ok) - set(top)):
            assert (samples[kept].reward, -kept) > (samples[left].reward, -left)

        for rule in ("best_vs_worst", "all_pairs"):
            result = pair_samples(samples, rule, keep_truncated=keep_truncated)
            if len(ok) < 2:
                assert result.outcome == "too_few" and not result.pairs
                continue
            top_r, bottom_r = max(rewards), min(rewards)
            expected = {(i, j) for i, j in itertools.product(ok, ok) if samples[i].reward > samples[j].reward
                        and (rule == "all_pairs" or samples[i].reward == top_r and samples[j].reward == bottom_r)}
            assert set(result.pairs) == expected and len(result.pairs) == len(expected)
            assert result.outcome == ("paired" if expected else "tied")


def test_pairs_never_tie_never_use_a_failure_and_never_pair_a_text_with_itself():
    samples = [s("a", 1.0), s("a", 0.0), s("b", 5.0, failure="x"), s("c", 0.0), s("d", 1.0)]
    result = pair_samples(samples, "best_vs_worst")
    assert result.pairs == [(0, 3), (4, 3)]  # the repeat of "a" is not usable; the failure is left out
    assert result.dropped == {"duplicate": 1, "failure": 1}
    assert pair_samples([s("a", 1.0), s("b", 1.0)], "best_vs_worst").outcome == "tied"
    assert pair_samples([s("a", 1.0), s("b", 0.0, cut=True)], "best_vs_worst").outcome == "too_few"
    margin = pair_samples([s("a", 1.0), s("b", 0.5)], "margin", threshold=0.6)
    assert margin.outcome == "below_margin" and not margin.pairs
