import pytest

from alignkit.judges import SINGLE_SCALE
from alignkit.rewards.interface import Sample
from alignkit.rewards.judge import JudgeReward
from alignkit.rewards.spec import RewardSpec, build_reward
from tests.helpers.judges import ScriptedJudge

LOW, HIGH = SINGLE_SCALE


def scaled(rating):
    return (rating - LOW) / (HIGH - LOW)


class SometimesGarbled(ScriptedJudge):
    """The scripted judge, except that any prompt containing GARBLE gets a reply without a verdict."""

    def reply(self, prompt):
        if "GARBLE" in prompt:
            return "Both have their charms; I cannot say."
        return super().reply(prompt)


def ask(text, completion, **metadata):
    return Sample([{"role": "user", "content": text}], completion, metadata)


def test_grade_mode_scales_the_rating_to_zero_one():
    judge = ScriptedJudge("grader")
    result = JudgeReward(backend=judge).score([ask("Say hi.", "GOOD hi"), ask("Say hi.", "meh")])
    assert result.scores == pytest.approx([scaled(8), scaled(2)])
    assert result.num_failures == 0 and judge.prompts_seen == 2


def test_grade_mode_grades_the_completion_as_the_last_turn_of_a_conversation():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q1"},
              {"role": "assistant", "content": "GOOD earlier answer"}, {"role": "user", "content": "q2"}]
    result = JudgeReward(backend=ScriptedJudge("grader")).score([Sample(prompt, "plain"), Sample(prompt, "GOOD")])
    assert result.scores == pytest.approx([scaled(2), scaled(8)])  # the earlier GOOD turn is only context
    broken = [{"role": "user", "content": "q"}, {"role": "user", "content": "q again"},
              {"role": "assistant", "content": "a"}, {"role": "user", "content": "q3"}]
    failed = JudgeReward(backend=ScriptedJudge("grader"), failure_reward=-1.0).score([Sample(broken, "GOOD")])
    assert failed.scores == [-1.0] and "alternate" in failed.failures[0]


def test_unparseable_verdict_gets_the_configured_reward_and_is_counted():
    reward = JudgeReward(backend=SometimesGarbled("grader"), failure_reward=-0.5, max_parse_retries=1)
    result = reward.score([ask("Say hi.", "GOOD hi"), ask("Say hi.", "GARBLE"), ask("Say hi.", "GARBLE too")])
    assert result.scores == pytest.approx([scaled(8), -0.5, -0.5])
    assert result.num_failures == 2
    assert all("Rating" in reason for reason in result.failures[1:])
    assert result.metrics()["reward_failures"] == 2.0
    assert reward.backend.prompts_seen == 3 + 2  # each failure asked once more


def test_pairwise_mode_against_the_reference_win_tie_loss():
    reward = JudgeReward(backend=ScriptedJudge("good"), mode="pairwise")
    result = reward.score([ask("Say hi.", "GOOD hi", answer="hello"),  # better than the reference
                           ask("Say hi.", "hi", answer="GOOD hello"),  # worse
                           ask("Say hi.", "hi", answer="hello")])  # position-biased judge: orders disagree
    assert result.scores == [1.0, 0.0, 0.5]
    one_order = JudgeReward(backend=ScriptedJudge("good"), mode="pairwise", both_orders=False)
    assert one_order.score([ask("Say hi.", "hi", answer="hello")]).scores == [0.0]


def test_pairwise_mode_failures_missing_reference_and_unparseable():
    reward = JudgeReward(backend=SometimesGarbled("good"), mode="pairwise", failure_reward=0.25,
                         reference_key="gold")
    result = reward.score([ask("Say hi.", "GOOD", gold="hello"), ask("Say hi.", "GOOD", answer="hello"),
                           ask("Say hi.", "GARBLE", gold="hello")])
    assert result.scores == [1.0, 0.25, 0.25]
    assert "gold" in result.failures[1] and "Verdict" in result.failures[2]
    assert result.num_failures == 2


def test_judge_replies_come_from_the_cache_on_a_rerun(tmp_path):
    cache = str(tmp_path / "judge.sqlite")
    samples = [ask("Say hi.", "GOOD hi"), ask("Say hi.", "meh")]
    first = JudgeReward(backend=ScriptedJudge("grader"), cache=cache).score(samples)
    again_judge = ScriptedJudge("grader")
    again = JudgeReward(backend=again_judge, cache=cache).score(samples)
    assert again.scores == first.scores and again_judge.prompts_seen == 0


def test_judge_reward_from_a_config():
    specs = [RewardSpec(kind="judge", judge="embedded", mode="pairwise", failure_reward=-1.0, weight=2.0)]
    reward = build_reward(specs, judge_backend=SometimesGarbled("good"))
    result = reward.score([ask("Say hi.", "GOOD", answer="hello"), ask("Say hi.", "GARBLE", answer="hello")])
    assert result.scores == [2.0, -2.0]
    assert result.components["judge"].scores == [1.0, -1.0] and result.num_failures == 1
