import math
import random
import statistics

import pytest

from alignkit.rewards.interface import CombinedReward, RewardResult, Sample, from_outcomes
from alignkit.rewards.shaping import RewardShaping, RunningMoments, ShapedReward
from alignkit.rewards.verifiable import ExactMatchReward, RegexReward


class Fixed:
    """A reward returning given scores (and failures) in order, to test what is built on top."""

    def __init__(self, name, scores, failures=None):
        self.name, self.scores = name, list(scores)
        self.failures = failures or [None] * len(self.scores)

    def score(self, samples):
        assert len(samples) == len(self.scores)
        return RewardResult(list(self.scores), list(self.failures))


def blank(n, num_tokens=None):
    return [Sample([{"role": "user", "content": "q"}], "a", {}, num_tokens) for _ in range(n)]


def test_weights_combine_and_each_component_is_reported_unweighted():
    digits = RegexReward("digits", pattern=r"\d")
    exact = ExactMatchReward("exact")
    samples = [Sample([], "42", {"answer": "42"}), Sample([], "forty-two", {"answer": "42"}),
               Sample([], "7", {})]
    result = CombinedReward([(digits, 0.5), (exact, 2.0)]).score(samples)
    d, e = digits.score(samples).scores, exact.score(samples).scores
    assert result.scores == pytest.approx([0.5 * a + 2.0 * b for a, b in zip(d, e)])
    assert result.components["digits"].scores == d and result.components["exact"].scores == e
    assert result.failures[:2] == [None, None] and result.failures[2].startswith("exact: ")
    metrics = result.metrics()
    assert metrics["reward/digits"] == pytest.approx(sum(d) / 3)
    assert metrics["reward/exact_failures"] == 1.0 and metrics["reward_failures"] == 1.0


def test_combined_reward_rejects_two_components_with_one_name():
    with pytest.raises(ValueError, match="regex"):
        CombinedReward([(RegexReward(pattern="a"), 1.0), (RegexReward(pattern="b"), 1.0)])


def test_a_failure_takes_the_configured_value_never_a_guess():
    result = from_outcomes([(0.7, None), (None, "no verdict"), (math.nan, None)], failure_reward=-2.0)
    assert result.scores == [0.7, -2.0, -2.0]
    assert result.num_failures == 2 and "not a finite number" in result.failures[2]


def test_running_normalisation_matches_the_statistics_of_everything_seen():
    rng = random.Random(0)
    batches = [[rng.gauss(3, 2) for _ in range(n)] for n in (5, 1, 8, 3)]
    shaped = ShapedReward(Fixed("r", []), RewardShaping(normalize="running"))
    seen = []
    for batch in batches:
        seen += batch
        out = shaped.apply(batch, [None] * len(batch))
        if len(seen) > 1:
            mean, std = statistics.fmean(seen), statistics.stdev(seen)
            assert out == pytest.approx([(v - mean) / std for v in batch])
    assert shaped.moments.count == len(seen)
    assert shaped.moments.mean == pytest.approx(statistics.fmean(seen))


def test_normalisation_state_round_trip_continues_identically():
    rng = random.Random(1)
    batches = [[rng.uniform(-1, 5) for _ in range(4)] for _ in range(4)]
    config = RewardShaping(normalize="running")
    one = ShapedReward(Fixed("r", []), config)
    for batch in batches[:2]:
        one.apply(batch, [None] * 4)
    resumed = ShapedReward(Fixed("r", []), config)
    resumed.load_state_dict(one.state_dict())
    for batch in batches[2:]:
        assert resumed.apply(batch, [None] * 4) == one.apply(batch, [None] * 4)
    assert resumed.state_dict() == one.state_dict()


def test_batch_normalisation_uses_only_the_batch():
    shaped = ShapedReward(Fixed("r", []), RewardShaping(normalize="batch"))
    batch = [1.0, 2.0, 6.0]
    out = shaped.apply(batch, [None] * 3)
    assert statistics.fmean(out) == pytest.approx(0.0, abs=1e-12) and statistics.stdev(out) == pytest.approx(1.0)
    assert shaped.apply(batch, [None] * 3) == out  # no memory between batches
    assert shaped.moments.count == 0


def test_length_penalty_per_token_and_over_a_target():
    scores, lengths = [1.0, 1.0, 1.0], [4, 10, 30]
    samples = [Sample([], "a", {}, n) for n in lengths]
    per_token = ShapedReward(Fixed("r", scores), RewardShaping(length_penalty=0.01))
    assert per_token.score(samples).scores == pytest.approx([1.0 - 0.01 * n for n in lengths])
    over = ShapedReward(Fixed("r", scores), RewardShaping(length_penalty=0.01, length_target=10))
    result = over.score(samples)
    assert result.scores == pytest.approx([1.0, 1.0, 1.0 - 0.01 * 20])
    assert result.unshaped == scores
    with pytest.raises(ValueError, match="num_tokens"):
        over.score(blank(3))


def test_clipping_bounds_the_final_reward_after_normalising():
    raw = [-10.0, 0.0, 0.5, 10.0]
    clipped = ShapedReward(Fixed("r", raw), RewardShaping(clip_low=-1.0, clip_high=1.0)).score(blank(4))
    assert clipped.scores == [max(-1.0, min(1.0, v)) for v in raw]
    high_only = ShapedReward(Fixed("r", raw), RewardShaping(clip_high=0.2)).score(blank(4))
    assert high_only.scores == [min(0.2, v) for v in raw]
    both = ShapedReward(Fixed("r", raw), RewardShaping(normalize="batch", clip_low=-0.5, clip_high=0.5))
    assert all(-0.5 <= v <= 0.5 for v in both.score(blank(4)).scores)


def test_running_moments_of_an_empty_or_single_batch():
    moments = RunningMoments()
    moments.update([])
    assert moments.count == 0
    moments.update([3.0])
    assert moments.mean == 3.0 and moments.std == 0.0
